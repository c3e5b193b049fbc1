"""Tests of geometry.scale: median / relative least-squares / robust scale alignment."""

import pytest
import torch

from trianflow_ros.geometry.scale import align_depth_map, align_scale, fit_scale, masked_median

METHODS = ('median', 'lsq', 'robust')


def _data(b=3, n=500, noise=0.0, outlier_ratio=0.0, seed=0, one_sided=False):
    g = torch.Generator().manual_seed(seed)
    source = 1.0 + 49.0 * torch.rand(b, n, generator=g, dtype=torch.float64)
    scale = 0.5 + 3.0 * torch.rand(b, generator=g, dtype=torch.float64)
    target = scale[:, None] * source * (1 + noise * torch.randn(b, n, generator=g,
                                                                dtype=torch.float64))
    outlier = torch.zeros(b, n, dtype=torch.bool)
    k = int(round(outlier_ratio * n))
    for i in range(b):
        outlier[i, torch.randperm(n, generator=g)[:k]] = True
    # gross outliers: off by a factor of 1.5 to 5 (one side, or both sides)
    factor = torch.exp(torch.log(torch.tensor(1.5)) + (torch.log(torch.tensor(5.0 / 1.5)))
                       * torch.rand(b, n, generator=g, dtype=torch.float64))
    if not one_sided:
        factor = torch.where(torch.rand(b, n, generator=g) < 0.5, factor, 1.0 / factor)
    target = torch.where(outlier, target * factor, target)
    return source, target, scale, outlier


@pytest.mark.parametrize('method', METHODS)
def test_exact_on_noise_free_data(method):
    source, target, scale, _ = _data()
    fit = fit_scale(source, target, method=method)
    assert torch.allclose(fit.scale, scale, rtol=1e-12)
    assert fit.valid.all() and fit.inliers.all()
    assert fit.scale.shape == (3,)


def test_median_hand_values():
    source = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    target = torch.tensor([[2.0, 3.0, 9.0, 8.0], [2.0, 4.0, 5.0, 100.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    s = align_scale(source, target, mask, method='median')
    # row 0: median(2, 3, 9) / median(1, 2, 3) = 3 / 2; row 1: 4.5 / 2.5 (even counts average)
    assert torch.allclose(s, torch.tensor([1.5, 1.8], dtype=torch.float64))
    assert masked_median(target, mask)[1] == 4.5


def test_lsq_hand_values():
    source = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    target = torch.tensor([[2.0, 2.0]], dtype=torch.float64)
    # r = source / target = (0.5, 1): s = (0.5 + 1) / (0.25 + 1) = 1.2
    s = align_scale(source, target, method='lsq')
    assert torch.allclose(s, torch.tensor([1.2], dtype=torch.float64))
    # it is the minimiser of sum (1 - s r)^2
    r = source / target
    for ds in (-1e-3, 1e-3):
        assert ((1 - (s + ds) * r) ** 2).sum() > ((1 - s * r) ** 2).sum()


@pytest.mark.parametrize('ratio', [0.3, 0.4])
def test_robust_survives_gross_outliers(ratio):
    source, target, scale, outlier = _data(b=4, n=2000, noise=0.01, outlier_ratio=ratio)
    fit = fit_scale(source, target, method='robust')
    assert ((fit.scale - scale).abs() / scale).max() < 0.01
    # the inlier set is essentially the true one
    assert (fit.inliers & outlier).sum() < 0.05 * outlier.sum()
    assert (fit.inliers & ~outlier).sum() > 0.95 * (~outlier).sum()
    # the data is hard: plain least squares is far off
    lsq = align_scale(source, target, method='lsq')
    assert ((lsq - scale).abs() / scale).max() > 0.05


def test_robust_picks_the_largest_cluster():
    # 40 % of the points agree on another scale (a moving object): consensus, not averaging
    source, target, scale, _ = _data(b=2, n=1000, noise=0.005)
    target[:, :400] = target[:, :400] * 1.7
    s = align_scale(source, target, method='robust')
    assert ((s - scale).abs() / scale).max() < 0.005


def test_one_sided_outliers_robust_beats_median():
    source, target, scale, _ = _data(b=3, n=1000, noise=0.01, outlier_ratio=0.4,
                                     one_sided=True, seed=1)
    robust = align_scale(source, target, method='robust')
    median = align_scale(source, target, method='median')
    assert ((robust - scale).abs() / scale).max() < 0.01
    assert ((median - scale).abs() / scale).max() > 0.01


@pytest.mark.parametrize('method', METHODS)
def test_batch_with_different_masks_equals_per_element(method):
    source, target, _, _ = _data(b=3, n=300, noise=0.02, outlier_ratio=0.2, seed=2)
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(3, 300, generator=g) < torch.tensor([[0.9], [0.3], [0.05]])
    batched = fit_scale(source, target, mask, method=method)
    for i in range(3):
        sel = mask[i]
        single = fit_scale(source[i:i + 1, sel], target[i:i + 1, sel], method=method)
        assert torch.allclose(batched.scale[i], single.scale[0], rtol=1e-12)
        assert torch.equal(batched.inliers[i, sel], single.inliers[0])
        assert not batched.inliers[i, ~sel].any()


@pytest.mark.parametrize('method', METHODS)
def test_no_valid_point_gives_flag_not_nan(method):
    source, target, scale, _ = _data(b=3, n=50)
    mask = torch.ones(3, 50, dtype=torch.bool)
    mask[1] = False
    source[2] = float('nan')                          # unusable values count as masked
    fit = fit_scale(source, target, mask, method=method)
    assert torch.equal(fit.valid, torch.tensor([True, False, False]))
    assert torch.isfinite(fit.scale).all()
    assert torch.equal(fit.scale[1:], torch.ones(2, dtype=torch.float64))
    assert torch.allclose(fit.scale[0], scale[0])
    assert not fit.inliers[1:].any()


def test_non_positive_and_nan_points_are_ignored():
    source, target, scale, _ = _data(b=1, n=100)
    source[0, :5] = -1.0
    target[0, 5:10] = 0.0
    target[0, 10:15] = float('inf')
    for method in METHODS:
        fit = fit_scale(source, target, method=method)
        assert torch.allclose(fit.scale, scale), method
        assert not fit.inliers[0, :15].any()


def test_weights_mask_and_bad_method():
    source, target, scale, _ = _data(b=1, n=10)
    target[0, :3] *= 10.0
    w = torch.ones(1, 10)
    w[0, :3] = 0.0                                    # weights > 0 select
    assert torch.allclose(align_scale(source, target, w, method='lsq'), scale)
    with pytest.raises(ValueError, match='method'):
        align_scale(source, target, method='mean')
    with pytest.raises(ValueError, match='target'):
        align_scale(source, target[:, :5])


def test_gradcheck_lsq_and_median():
    source, target, _, _ = _data(b=2, n=6, noise=0.1)
    source.requires_grad_()
    target.requires_grad_()
    mask = torch.tensor([[True] * 6, [True, False] * 3])
    assert torch.autograd.gradcheck(lambda s, t: align_scale(s, t, mask, method='lsq'),
                                    (source, target))
    assert torch.autograd.gradcheck(lambda s, t: align_scale(s, t, mask, method='median'),
                                    (source, target))
    assert torch.autograd.gradcheck(lambda s, t: align_scale(s, t, method='robust'),
                                    (source, target))


def test_align_depth_map():
    g = torch.Generator().manual_seed(4)
    b, h, w = 2, 16, 24
    depth = 1.0 + 9.0 * torch.rand(b, 1, h, w, generator=g, dtype=torch.float64)
    depth = torch.nn.functional.avg_pool2d(depth, 3, stride=1, padding=1,
                                           count_include_pad=False)
    scale = torch.tensor([0.5, 2.5], dtype=torch.float64)
    x = torch.rand(b, 40, 2, generator=g, dtype=torch.float64) * torch.tensor([w - 1.0, h - 1.0])
    # bilinear reading of the map at x, by hand (align_corners=True: pixel centres at integers)
    u0, v0 = x[..., 0].floor().long(), x[..., 1].floor().long()
    a, c = x[..., 0] - u0, x[..., 1] - v0
    u1, v1 = (u0 + 1).clamp(max=w - 1), (v0 + 1).clamp(max=h - 1)
    bi = torch.arange(b)[:, None]
    d = depth[:, 0]
    read = ((1 - a) * (1 - c) * d[bi, v0, u0] + a * (1 - c) * d[bi, v0, u1]
            + (1 - a) * c * d[bi, v1, u0] + a * c * d[bi, v1, u1])
    depth_tri = scale[:, None] * read
    # points outside the image are not used, whatever their depth
    x[:, :5, 0] = -3.0
    depth_tri[:, :5] = 1e3
    for method in METHODS:
        s, aligned = align_depth_map(depth, x, depth_tri, method=method)
        assert torch.allclose(s, scale, rtol=1e-10), method
        assert torch.allclose(aligned, scale[:, None, None, None] * depth)
    mask = torch.ones(b, 40, dtype=torch.bool)
    mask[1] = False
    s, aligned = align_depth_map(depth, x, depth_tri, mask)
    assert s[1] == 1.0 and torch.equal(aligned[1], depth[1])


@pytest.mark.parametrize('method', METHODS)
def test_masked_garbage_gives_finite_gradients(method):
    # training reads depths at triangulated pixels: NaN / zero / negative entries are masked
    # and must not poison the gradient of the valid ones
    source, target, scale, _ = _data(b=2, n=10)
    source[0, :3] = float('nan')
    target[0, 3:5] = 0.0
    source[1] = -1.0
    source.requires_grad_()
    target.requires_grad_()
    out = align_scale(source, target, method=method)
    out.sum().backward()
    assert torch.allclose(out[0], scale[0]) and out[1] == 1.0
    assert torch.isfinite(source.grad).all() and torch.isfinite(target.grad).all()
    assert source.grad[0, 5:].abs().sum() > 0 and source.grad[0, :5].abs().sum() == 0


def test_log_method_exact_weighted_and_unbiased():
    """'log' recovers the scale exactly, honours weights, and is unbiased where 'robust' is not."""
    g = torch.Generator().manual_seed(3)
    src = 1.0 + 20.0 * torch.rand(2, 4000, generator=g, dtype=torch.float64)
    tgt = src * torch.tensor([[0.5], [2.0]], dtype=torch.float64)
    fit = fit_scale(src, tgt, method='log')
    assert torch.allclose(fit.scale, torch.tensor([0.5, 2.0], dtype=torch.float64), rtol=1e-12)
    # symmetric relative noise (log-normal, 3 %): the relative least squares of 'robust' is
    # low by ~var, the log mean is not
    noisy = tgt * torch.exp(0.03 * torch.randn(tgt.shape, generator=g, dtype=torch.float64))
    log_s = fit_scale(src, noisy, method='log').scale
    rob_s = fit_scale(src, noisy, method='robust').scale
    truth = torch.tensor([0.5, 2.0], dtype=torch.float64)
    assert float(((log_s / truth).log()).abs().max()) < 2e-3
    assert float((rob_s / truth).log().max()) < -5e-4          # biased low
    # weights: a zero-weight cluster does not count
    tgt2 = tgt.clone()
    tgt2[:, :1000] *= 1.05                                         # inside the 0.1 window
    w = torch.ones_like(src)
    w[:, :1000] = 0.0
    assert torch.allclose(fit_scale(src, tgt2, method='log', weights=w).scale, truth,
                          rtol=1e-12)


def test_log_method_gradcheck():
    g = torch.Generator().manual_seed(4)
    src = (1.0 + torch.rand(1, 12, generator=g, dtype=torch.float64)).requires_grad_()
    tgt = (src.detach() * 1.7 * torch.exp(0.01 * torch.randn(1, 12, generator=g,
                                                             dtype=torch.float64)))
    assert torch.autograd.gradcheck(lambda s: fit_scale(s, tgt, method='log').scale, (src,))
