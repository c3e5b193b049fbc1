"""Tests of geometry.msac: the RANSAC framework, with a 2D line estimator plugged in."""

import dataclasses
import math

import pytest
import torch

from trianflow_ros.config import RansacConfig
from trianflow_ros.geometry.msac import (Estimator, Fit, hypothesise, local_optimisation, ransac,
                                         sets_needed, Threshold, top_hypotheses)
from trianflow_ros.geometry.ransac import ransac_essential


def _line_points(b, n, outliers, seed=0, noise=0.0):
    """Points (B, N, 2) on the lines a x + b y + c = 0 (unit normals); outliers 1-6 off them."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(b, generator=g, dtype=torch.float64) * math.pi
    normal = torch.stack((torch.cos(angle), torch.sin(angle)), dim=-1)            # (B, 2)
    c = torch.rand(b, generator=g, dtype=torch.float64) * 4.0 - 2.0
    s = torch.rand(b, n, generator=g, dtype=torch.float64) * 20.0 - 10.0
    direction = torch.stack((-normal[:, 1], normal[:, 0]), dim=-1)
    x = s[..., None] * direction[:, None] - c[:, None, None] * normal[:, None]
    x = x + noise * torch.randn(x.shape, generator=g, dtype=x.dtype)
    is_out = torch.rand(b, n, generator=g, dtype=torch.float64) < outliers
    off = (torch.rand(b, n, generator=g, dtype=torch.float64) * 5.0 + 1.0) * torch.where(
        torch.rand(b, n, generator=g) < 0.5, -1.0, 1.0).double()
    x = torch.where(is_out[..., None], x + off[..., None] * normal[:, None], x)
    return x, torch.cat((normal, c[:, None]), dim=-1), is_out


def _line_estimator(x):
    """Describe 2D lines a x + b y + c = 0, (a, b) unit: 2-point sets, squared distances, TLS."""
    def solve(idx):                                                # (B, S, 2) -> (B, S, 3)
        b, s, k = idx.shape
        p = x.gather(1, idx.reshape(b, s * k, 1).expand(-1, -1, 2)).reshape(b, s, k, 2)
        d = p[:, :, 1] - p[:, :, 0]
        normal = torch.stack((-d[..., 1], d[..., 0]), dim=-1)
        norm = normal.norm(dim=-1, keepdim=True)
        normal = normal / norm.clamp(min=1e-30)
        c = -(normal * p[:, :, 0]).sum(-1, keepdim=True)
        return torch.cat((normal, c), dim=-1), norm[..., 0] > 1e-12

    def residuals(lines):                                          # (B, K, 3) -> (B, K, N)
        return (lines[..., None, :2] * x[:, None]).sum(-1).add(lines[..., 2:]).square()

    def refit(w):                                                  # (B, K, N) -> (B, K, 3)
        wn = w / w.sum(-1, keepdim=True).clamp(min=1e-30)
        mean = wn @ x                                              # (B, K, 2)
        d = x[:, None] - mean[:, :, None]
        cov = (d * wn[..., None]).transpose(-1, -2) @ d
        normal = torch.linalg.eigh(cov)[1][..., 0]
        return torch.cat((normal, -(normal * mean).sum(-1, keepdim=True)), dim=-1)

    return Estimator(2, solve, residuals, refit=refit)


def _same_line(a, b, tol):
    """Lines (B, 3) equal up to sign."""
    sign = torch.sign((a * b).sum(-1, keepdim=True))
    return bool(((a - sign * b).abs() < tol).all())


def test_plugged_in_line_estimator_exact_with_outliers():
    x, line, is_out = _line_points(3, 200, 0.4, seed=1)
    w = torch.ones(3, 200, dtype=torch.float64)
    model, inliers, score = ransac(_line_estimator(x), w, Threshold.of(0.05), 64, 3,
                                   generator=torch.Generator().manual_seed(0))
    assert model.shape == (3, 3) and inliers.shape == (3, 200) and score.shape == (3,)
    assert _same_line(model, line, 1e-9)
    assert torch.equal(inliers, ~is_out)
    assert torch.allclose(score, (~is_out).sum(1).double())


def test_local_optimisation_reaches_the_least_squares_fit_on_noise():
    x, line, is_out = _line_points(2, 400, 0.3, seed=2, noise=0.02)
    est = _line_estimator(x)
    w = torch.ones(2, 400, dtype=torch.float64)
    thr = Threshold.of(0.1)
    hyps = hypothesise(est, w, w, thr, 32, generator=torch.Generator().manual_seed(3))
    start = top_hypotheses(hyps, 2)                                  # (B, 2, 3)
    fit = local_optimisation(est, start, w, thr, 5, span=4.0)
    assert isinstance(fit, Fit) and fit.models.shape == (2, 2, 3)
    assert fit.residuals.shape == (2, 2, 400) and fit.score.shape == (2, 2)
    assert bool((fit.score >= hyps.quality.topk(2, dim=1).values - 1e-12).all())
    model, r2, _ = fit.best()
    assert _same_line(model, line, 5e-3)
    # the refit of the final inliers is a fixed point: the LO converged
    again = est.refit((w * (r2 < 0.01)).unsqueeze(1))[:, 0]
    assert _same_line(again, model, 1e-6)


def test_hypothesise_shapes_validity_and_reproducibility():
    x, _, _ = _line_points(2, 50, 0.2, seed=4)
    x[:, 1] = x[:, 0]                                    # a duplicate: some sets are degenerate
    est = _line_estimator(x)
    w = torch.ones(2, 50, dtype=torch.float64)
    w[:, 0] = 0.0                                        # never drawn: no degenerate set left
    a = hypothesise(est, w, w, Threshold.of(0.05), 20, chunk_sets=6,
                    generator=torch.Generator().manual_seed(5))
    assert a.models.shape == (2, 20, 3) and a.quality.shape == (2, 20) and a.sets == 20
    b = hypothesise(est, w, w, Threshold.of(0.05), 20, chunk_sets=6,
                    generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.models, b.models) and torch.equal(a.quality, b.quality)
    c = hypothesise(est, w, w, Threshold.of(0.05), 20, chunk_sets=6,
                    generator=torch.Generator().manual_seed(6))
    assert not torch.equal(a.models, c.models)
    # invalid hypotheses (two equal points) score -1
    w = torch.zeros(2, 50, dtype=torch.float64)
    w[:, :2] = 1.0
    d = hypothesise(est, w, torch.ones_like(w), Threshold.of(0.05), 8,
                    generator=torch.Generator().manual_seed(0))
    assert bool((d.quality == -1.0).all())


def test_adaptive_stop_counts():
    assert sets_needed(torch.tensor([1.0]), 5, 0.999).item() < 1.0
    w = torch.tensor([0.5, 0.9], dtype=torch.float64)
    expected = math.log(1 - 0.99) / torch.log(1 - w ** 4)
    assert torch.allclose(sets_needed(w, 4, 0.99), expected)
    # noise-free, no outliers: the first round meets the bound
    x, _, _ = _line_points(2, 100, 0.0, seed=7)
    est = _line_estimator(x)
    w = torch.ones(2, 100, dtype=torch.float64)
    kw = {'chunk_sets': 4, 'confidence': 0.99, 'generator': torch.Generator().manual_seed(0)}
    assert hypothesise(est, w, w, Threshold.of(0.01), 100, **kw).sets == 4
    kw['generator'] = torch.Generator().manual_seed(0)
    assert hypothesise(est, w, w, Threshold.of(0.01), 100, min_sets=10, **kw).sets == 12
    # 70 % outliers: the bound for w = 0.3, k = 2 is 49 sets; the draws stop at the first round
    # past it (the best ratio seen is at most the true one) or at the cap
    x, _, is_out = _line_points(1, 400, 0.7, seed=8)
    est = _line_estimator(x)
    w = torch.ones(1, 400, dtype=torch.float64)
    kw['generator'] = torch.Generator().manual_seed(1)
    hyps = hypothesise(est, w, w, Threshold.of(0.01), 200, **kw)
    ratio = (~is_out).double().mean()
    bound = sets_needed(ratio[None], 2, 0.99).item()
    assert bound <= hyps.sets < bound + 4 or hyps.sets == 200
    assert hyps.models.shape[1] == hyps.sets


def test_distance_residuals_and_per_element_thresholds():
    """Residuals as distances (squared for the score) and one threshold per batch element."""
    x, line, is_out = _line_points(2, 300, 0.3, seed=9)
    base = _line_estimator(x)
    est = dataclasses.replace(base, residuals=lambda m: base.residuals(m).sqrt(), squared=False)
    w = torch.ones(2, 300, dtype=torch.float64)
    thr = torch.tensor([0.05, 0.5], dtype=torch.float64)[:, None, None]
    model, inliers, score = ransac(est, w, Threshold.of(thr), 64, 2,
                                   generator=torch.Generator().manual_seed(0))
    assert _same_line(model, line, 1e-9)
    dist = base.residuals(model[:, None])[:, 0].sqrt()
    assert torch.equal(inliers, dist < thr[:, :, 0])
    with pytest.raises(ValueError):
        ransac(est, w, Threshold.of(thr), 0, 2)


def test_essential_tuning_comes_from_the_config_section():
    """ransac_essential reads geometry.ransac; no params = the section's defaults."""
    from test_geometry_ransac import _scene
    x1, x2, K, _, _, _ = _scene(2, 300, seed=3)

    def run(params):
        return ransac_essential(x1, x2, K, K, generator=torch.Generator().manual_seed(0),
                                params=params)
    default, same = run(None), run(RansacConfig())
    assert torch.equal(default.model, same.model) and torch.equal(default.inliers, same.inliers)
    other = run(RansacConfig(refine_rounds=1, lo_topk=1, chunk_sets=2, noise_scale=1.0))
    assert not torch.equal(default.model, other.model)
