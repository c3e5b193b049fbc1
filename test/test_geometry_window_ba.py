"""Tests of geometry.window_ba: sliding-window bundle adjustment with inverse depths."""

import pytest
import torch

from trianflow_ros.geometry.se3 import se3_exp
from trianflow_ros.geometry.window_ba import window_adjust


def _window(frames=5, points=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    K = torch.tensor([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]], dtype=dt).expand(frames, 3, 3)
    T = torch.eye(4, dtype=dt).repeat(frames, 1, 1)
    for i in range(frames):
        T[i] = se3_exp(torch.tensor([[0.05 * i, 0.01 * i, 0.8 * i, 0.0, 0.01 * i, 0.0]],
                                    dtype=dt))[0]
    Pw = torch.stack((torch.rand(points, generator=g, dtype=dt) * 16 - 8,
                      torch.rand(points, generator=g, dtype=dt) * 6 - 3,
                      torch.rand(points, generator=g, dtype=dt) * 30 + 8), -1)

    def project(Tw, X):
        Pc = (X - Tw[:3, 3]) @ Tw[:3, :3]
        return torch.stack((500 * Pc[:, 0] / Pc[:, 2] + 320, 500 * Pc[:, 1] / Pc[:, 2] + 240),
                           -1), Pc[:, 2]

    anchor = torch.zeros(points, dtype=torch.int64)
    anchor[points // 2:] = 1                                   # two anchor frames
    ua = torch.zeros(points, 2, dtype=dt)
    rho = torch.zeros(points, dtype=dt)
    op, of, ou = [], [], []
    for i in range(frames):
        u, z = project(T[i], Pw)
        is_a = anchor == i
        ua[is_a], rho[is_a] = u[is_a], 1.0 / z[is_a]
        later = anchor < i
        op.append(torch.nonzero(later).flatten())
        of.append(torch.full((int(later.sum()),), i))
        ou.append(u[later])
    return T, K, anchor, ua, rho, torch.cat(op), torch.cat(of), torch.cat(ou)


def test_recovers_perturbed_poses_and_depths_exactly():
    T, K, anchor, ua, rho, op, of, ou = _window()
    g = torch.Generator().manual_seed(1)
    T0 = T.clone()
    T0[2:] = se3_exp(torch.randn(3, 6, generator=g, dtype=torch.float64) * 0.01) @ T[2:]
    rho0 = rho * (1 + 0.05 * torch.randn(rho.shape, generator=g, dtype=torch.float64))
    res = window_adjust(T0, K, anchor, ua, rho0, op, of, ou, fixed=2, iterations=15)
    assert res.T_world.shape == T.shape and res.rho.shape == rho.shape
    assert res.residual_px.shape == op.shape
    assert torch.equal(res.T_world[:2], T0[:2])                       # held
    assert float((res.T_world - T).abs().max()) < 1e-8
    assert float(((res.rho - rho) / rho).abs().max()) < 1e-8
    assert res.cost_after < 1e-12 < res.cost_before and res.iterations > 0


def test_noise_reduces_cost_and_robust_to_outliers():
    T, K, anchor, ua, rho, op, of, ou = _window(seed=2)
    g = torch.Generator().manual_seed(3)
    noisy = ou + 0.5 * torch.randn(ou.shape, generator=g, dtype=torch.float64)
    noisy[:20] += 40.0                                               # gross outliers
    T0 = T.clone()
    T0[2:] = se3_exp(torch.randn(3, 6, generator=g, dtype=torch.float64) * 0.005) @ T[2:]
    res = window_adjust(T0, K, anchor, ua, rho, op, of, noisy, fixed=2, iterations=10)
    assert res.cost_after < res.cost_before
    assert float((res.T_world[2:, :3, 3] - T[2:, :3, 3]).norm(dim=-1).max()) < 0.05
    assert float(res.residual_px[:20].min()) > 10.0                 # outliers stay outliers


def test_input_errors():
    T, K, anchor, ua, rho, op, of, ou = _window(frames=3, points=20)
    with pytest.raises(ValueError, match='fixed'):
        window_adjust(T, K, anchor, ua, rho, op, of, ou, fixed=0)
    with pytest.raises(ValueError, match='anchor'):
        window_adjust(T, K, anchor, ua, rho, op, anchor[op], ou)
    with pytest.raises(ValueError, match='obs_frame'):
        window_adjust(T, K, anchor, ua, rho, op, of[:-1], ou)
