"""Tests of geometry.epipolar: Hartley normalisation, 8-point, F/E conversions, epipolar errors."""

import cv2
import numpy as np
import pytest
import torch

from trianflow_ros.geometry.camera import project
from trianflow_ros.geometry.epipolar import (
    eight_point, epipolar_distance, epipolar_distance_map, essential_from_fundamental,
    five_point, fundamental_from_essential, normalize_points, project_to_essential,
    sampson_distance)
from trianflow_ros.geometry.se3 import skew, so3_exp

FX, CX, CY, WIDTH, HEIGHT = 718.9, 607.2, 185.2, 1241, 376


def _K(b, dtype=torch.float64):
    K = torch.tensor([[FX, 0.0, CX], [0.0, FX, CY], [0.0, 0.0, 1.0]], dtype=dtype)
    return K.expand(b, 3, 3).clone()


def _scene(b, n, seed=0, noise=0.0, dtype=torch.float64):
    """KITTI-like two-view scene: points visible in image 1, in front of both cameras."""
    g = torch.Generator().manual_seed(seed)
    R = so3_exp((torch.rand(b, 3, generator=g, dtype=dtype) - 0.5) * 0.2)
    t = torch.randn(b, 3, generator=g, dtype=dtype) * 0.4
    t[:, 2] += 1.0
    t = t / t.norm(dim=-1, keepdim=True)
    u = torch.rand(b, n, generator=g, dtype=dtype) * (WIDTH - 1)
    v = torch.rand(b, n, generator=g, dtype=dtype) * (HEIGHT - 1)
    d = 4.0 + torch.rand(b, n, generator=g, dtype=dtype) * 40.0
    X1 = torch.stack(((u - CX) / FX * d, (v - CY) / FX * d, d), dim=-1)
    K = _K(b, dtype)
    x1, _ = project(X1, K)
    x2, z2 = project(X1 @ R.transpose(1, 2) + t[:, None], K)
    assert bool((z2 > 0).all())
    x1 = x1 + noise * torch.randn(x1.shape, generator=g, dtype=dtype)
    x2 = x2 + noise * torch.randn(x2.shape, generator=g, dtype=dtype)
    return x1, x2, K, R, t


def _true_F(K, R, t):
    return fundamental_from_essential(skew(t) @ R, K, K)


def _same_up_to_scale(A, B):
    """Max abs difference of Frobenius-normalised matrices, sign aligned."""
    A = A / A.flatten(1).norm(dim=1)[:, None, None]
    B = B / B.flatten(1).norm(dim=1)[:, None, None]
    sign = torch.sign((A * B).flatten(1).sum(1))[:, None, None]
    return (A - sign * B).abs().max().item()


def test_normalize_points_statistics_and_transform():
    x1, _, _, _, _ = _scene(3, 100, seed=1)
    xn, T = normalize_points(x1)
    assert xn.shape == (3, 100, 2) and T.shape == (3, 3, 3)
    assert torch.allclose(xn.mean(1), torch.zeros(3, 2, dtype=xn.dtype), atol=1e-10)
    assert torch.allclose(xn.norm(dim=-1).mean(1), torch.full((3,), 2.0 ** 0.5,
                                                              dtype=xn.dtype))
    h = torch.cat((x1, torch.ones_like(x1[..., :1])), dim=-1) @ T.transpose(1, 2)
    assert torch.allclose(h[..., :2], xn, atol=1e-10)


def test_normalize_points_weights_ignore_zero_weight_points():
    x1, _, _, _, _ = _scene(1, 50, seed=2)
    w = torch.ones(1, 50, dtype=x1.dtype)
    w[:, 40:] = 0.0
    far = x1.clone()
    far[:, 40:] = 1e6                                    # masked points must not matter
    _, T_ref = normalize_points(x1[:, :40])
    _, T_w = normalize_points(far, w)
    assert torch.allclose(T_ref, T_w, atol=1e-12)


def test_eight_point_exact_on_noise_free_scene_batched():
    x1, x2, K, R, t = _scene(4, 60, seed=3)
    F = eight_point(x1, x2)
    assert F.shape == (4, 3, 3)
    assert torch.allclose(F.flatten(1).norm(dim=1), torch.ones(4, dtype=F.dtype))
    assert torch.linalg.svdvals(F)[:, 2].abs().max() < 1e-10          # rank 2
    assert _same_up_to_scale(F, _true_F(K, R, t)) < 1e-7
    assert sampson_distance(F, x1, x2).max() < 1e-6
    # each batch element equals its own B = 1 solution
    for i in range(4):
        Fi = eight_point(x1[i:i + 1], x2[i:i + 1])
        assert torch.allclose(Fi, F[i:i + 1], atol=1e-10)


def test_eight_point_weights_select_the_points():
    x1, x2, K, R, t = _scene(1, 60, seed=4)
    bad = x2.clone()
    bad[:, 30:] += 25.0                                  # corrupt half of the points ...
    w = torch.zeros(1, 60, dtype=x1.dtype)
    w[:, :30] = 1.0                                      # ... and give them zero weight
    F = eight_point(x1, bad, w)
    assert _same_up_to_scale(F, _true_F(K, R, t)) < 1e-7


def test_eight_point_matches_opencv_with_noise():
    x1, x2, K, R, t = _scene(1, 300, seed=5, noise=0.3)
    F = eight_point(x1, x2)
    F_cv, _ = cv2.findFundamentalMat(x1[0].numpy(), x2[0].numpy(), cv2.FM_8POINT)
    F_cv = torch.from_numpy(F_cv)[None]
    # both are least-squares 8-point solutions: same residual level, nearly the same matrix
    d_ours = sampson_distance(F, x1, x2).mean()
    d_cv = sampson_distance(F_cv, x1, x2).mean()
    assert d_ours < 1.05 * d_cv
    assert _same_up_to_scale(F, F_cv) < 1e-3


def test_eight_point_rejects_bad_input():
    with pytest.raises(ValueError, match='x1'):
        eight_point(torch.zeros(2, 10, 3), torch.zeros(2, 10, 3))
    with pytest.raises(ValueError, match='at least 8'):
        eight_point(torch.zeros(1, 7, 2), torch.zeros(1, 7, 2))
    with pytest.raises(ValueError, match='weights'):
        eight_point(torch.zeros(1, 10, 2), torch.zeros(1, 10, 2), torch.ones(1, 9))


def test_eight_point_gradcheck():
    x1, x2, _, _, _ = _scene(1, 12, seed=6, noise=0.5)
    w = torch.rand(1, 12, generator=torch.Generator().manual_seed(0), dtype=x1.dtype) + 0.5
    x1 = x1.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, ww: eight_point(a, x2, ww), (x1, w),
                                    eps=1e-6, atol=1e-5)


def test_essential_fundamental_roundtrip_and_projection():
    x1, x2, K, R, t = _scene(3, 20, seed=7)
    K2 = K.clone()
    K2[:, 0, 0] = 700.0                                  # different cameras
    E = skew(t) @ R
    F = fundamental_from_essential(E, K, K2)
    assert torch.allclose(essential_from_fundamental(F, K, K2), E, atol=1e-10)
    noisy = E + 0.01 * torch.randn(3, 3, 3, generator=torch.Generator().manual_seed(1),
                                   dtype=E.dtype)
    P = project_to_essential(noisy)
    s = torch.linalg.svdvals(P)
    assert torch.allclose(s[:, 0], s[:, 1], atol=1e-12) and s[:, 2].abs().max() < 1e-12
    assert torch.allclose(project_to_essential(E), E, atol=1e-12)
    assert torch.autograd.gradcheck(project_to_essential, (noisy.clone().requires_grad_(),))


def test_sampson_and_epipolar_distance_values():
    # F of a pure x-translation (rectified stereo): epipolar lines are the rows v = const
    F = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]],
                     dtype=torch.float64)
    x1 = torch.tensor([[[10.0, 20.0], [5.0, 7.0]]], dtype=torch.float64)
    x2 = torch.tensor([[[30.0, 23.0], [1.0, 7.0]]], dtype=torch.float64)
    # x2^T F x1 = v1 - v2; |grad|^2 = 2 -> Sampson = |dv| / sqrt(2); line distance = |dv|
    assert torch.allclose(epipolar_distance(F, x1, x2),
                          torch.tensor([[3.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(sampson_distance(F, x1, x2),
                          torch.tensor([[3.0 / 2.0 ** 0.5, 0.0]], dtype=torch.float64))


def test_distances_zero_on_exact_scene_and_grow_with_noise():
    x1, x2, K, R, t = _scene(2, 500, seed=8)
    F = _true_F(K, R, t)
    assert sampson_distance(F, x1, x2).shape == (2, 500)
    assert sampson_distance(F, x1, x2).max() < 1e-8
    assert epipolar_distance(F, x1, x2).max() < 1e-8
    g = torch.Generator().manual_seed(2)
    x2n = x2 + 0.5 * torch.randn(x2.shape, generator=g, dtype=x2.dtype)
    d = sampson_distance(F, x1, x2n)
    # noise only in image 2: the Sampson distance is about the normal component, 0.5 px RMS
    assert 0.2 < d.square().mean().sqrt().item() < 0.5
    assert bool((epipolar_distance(F, x1, x2n) >= d - 1e-9).all())


def test_sampson_distance_gradcheck():
    g = torch.Generator().manual_seed(9)
    # well-scaled inputs (unit-size coordinates) so that finite differences are meaningful
    F = torch.randn(2, 3, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    x1 = torch.randn(2, 6, 2, generator=g, dtype=torch.float64).requires_grad_(True)
    x2 = torch.randn(2, 6, 2, generator=g, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(sampson_distance, (F, x1, x2))
    assert torch.autograd.gradcheck(epipolar_distance, (F, x1, x2))


def test_epipolar_distance_map_matches_point_version():
    b, h, w = 2, 8, 12
    K = _K(b)
    R = so3_exp(torch.tensor([[0.0, 0.02, 0.0], [0.01, 0.0, 0.0]], dtype=torch.float64))
    t = torch.tensor([[0.1, 0.0, 1.0], [0.0, 0.1, 1.0]], dtype=torch.float64)
    F = _true_F(K, R, t)
    flow = torch.randn(b, 2, h, w, generator=torch.Generator().manual_seed(3),
                       dtype=torch.float64)
    D = epipolar_distance_map(F, flow)
    assert D.shape == (b, 1, h, w)
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                          torch.arange(w, dtype=torch.float64), indexing='ij')
    k = (5, 7)                                           # pixel (row 5, column 7)
    x1 = torch.stack((u[k], v[k]))[None, None].expand(b, 1, 2)
    x2 = x1 + flow[:, :, k[0], k[1]][:, None]
    assert torch.allclose(D[:, 0, k[0], k[1]], epipolar_distance(F, x1, x2)[:, 0])
    Fn = F / F.flatten(1).norm(dim=1)[:, None, None]
    assert torch.autograd.gradcheck(lambda f: epipolar_distance_map(Fn, f),
                                    (flow[:, :, :3, :4].clone().requires_grad_(True),))


def test_float32_and_opencv_fundamental_agree_on_exact_data():
    x1, x2, K, R, t = _scene(1, 100, seed=10)
    F32 = eight_point(x1.float(), x2.float())
    assert F32.dtype == torch.float32
    F_cv, _ = cv2.findFundamentalMat(x1[0].numpy(), x2[0].numpy(), cv2.FM_8POINT)
    assert _same_up_to_scale(F32.double(), torch.from_numpy(np.asarray(F_cv))[None]) < 1e-3


def test_five_point_exact_solutions_batched():
    x1, x2, K, R, t = _scene(6, 5, seed=11)
    y1 = torch.linalg.solve(K, torch.cat((x1, torch.ones_like(x1[..., :1])), -1)
                            .transpose(1, 2)).transpose(1, 2)
    y2 = torch.linalg.solve(K, torch.cat((x2, torch.ones_like(x2[..., :1])), -1)
                            .transpose(1, 2)).transpose(1, 2)
    E, valid = five_point(y1[..., :2], y2[..., :2])
    assert E.shape == (6, 10, 3, 3) and valid.shape == (6, 10) and valid.dtype == torch.bool
    assert bool(valid.any(dim=1).all()) and int(valid.sum(1).max()) <= 10
    En = E / E.flatten(-2).norm(dim=-1).clamp(min=1e-30)[..., None, None]
    E_true = skew(t) @ R
    E_true = (E_true / E_true.flatten(1).norm(dim=1)[:, None, None]).unsqueeze(1)
    dist = torch.minimum((En - E_true).flatten(-2).norm(dim=-1),
                         (En + E_true).flatten(-2).norm(dim=-1))
    dist = torch.where(valid, dist, torch.full_like(dist, 10.0))
    assert dist.min(dim=1).values.max() < 1e-8          # the true E is among the roots
    # every real root satisfies the five constraints and is essential
    res = torch.einsum('bni,bkij,bnj->bkn', y2, En, y1).abs().amax(-1)
    assert res[valid].max() < 1e-9
    s = torch.linalg.svdvals(En[valid])
    assert torch.allclose(s[:, 0], s[:, 1], atol=1e-8) and s[:, 2].max() < 1e-8
    with pytest.raises(ValueError, match='5, 2'):
        five_point(y1[:, :4, :2], y2[:, :4, :2])


def test_five_point_matches_opencv_solution_set():
    x1, x2, K, R, t = _scene(1, 5, seed=12)
    E_cv, _ = cv2.findEssentialMat(x1[0].numpy(), x2[0].numpy(), K[0].numpy(), cv2.RANSAC,
                                   0.999, 1.0)
    y1 = (x1 - torch.tensor([CX, CY], dtype=x1.dtype)) / FX
    y2 = (x2 - torch.tensor([CX, CY], dtype=x2.dtype)) / FX
    E, valid = five_point(y1, y2)
    ours = E[0][valid[0]]
    ours = ours / ours.flatten(1).norm(dim=1)[:, None, None]
    for k in range(E_cv.shape[0] // 3):                  # OpenCV stacks its solutions
        e = torch.from_numpy(E_cv[3 * k:3 * k + 3])
        e = e / e.norm()
        d = torch.minimum((ours - e).flatten(1).norm(dim=1), (ours + e).flatten(1).norm(dim=1))
        assert d.min() < 1e-6
