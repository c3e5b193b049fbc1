"""Tests of geometry.flow_masks: visibility, F-B consistency, scores and match sampling."""

import pytest
import torch

from trianflow_ros.data.synthetic import make_sequence
from trianflow_ros.geometry.flow_masks import (fb_consistency_mask, fb_difference,
                                               flow_valid_mask, occlusion_mask, rigid_score,
                                               sample_correspondences, score_map)


@pytest.fixture(scope='module')
def pair():
    """Render a driving pair with exact flows both ways and true visibility (64x208)."""
    seq = make_sequence('forward', num_frames=2, height=64, width=208, seed=0, stride=2)
    return seq.pair(0, 1)


def _const_flow(u, v, b=1, h=6, w=9, dtype=torch.float64):
    flow = torch.zeros(b, 2, h, w, dtype=dtype)
    flow[:, 0], flow[:, 1] = u, v
    return flow


# ---------------------------------------------------------------------------- visibility

@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_zero_flow_all_visible(dtype):
    flow = torch.zeros(2, 2, 7, 11, dtype=dtype, requires_grad=True)
    mask = occlusion_mask(flow)
    assert mask.shape == (2, 1, 7, 11) and mask.dtype == dtype
    assert torch.all(mask == 1) and not mask.requires_grad           # a mask, not a loss
    consistent = fb_consistency_mask(flow, flow)
    assert torch.all(consistent == 1) and not consistent.requires_grad


def test_integer_shift_leaves_uncovered_columns_occluded():
    # every pixel of image 2 lands 3 columns to the right in image 1: columns 0-2 of image 1
    # are seen by nobody
    mask = occlusion_mask(_const_flow(3.0, 0.0))
    assert torch.all(mask[..., :3] == 0)
    assert torch.all(mask[..., 3:] == 1)


def test_half_pixel_shift_splits_mass():
    mask = occlusion_mask(_const_flow(0.5, 0.0))
    assert torch.allclose(mask[..., 0], torch.full_like(mask[..., 0], 0.5))
    assert torch.all(mask[..., 1:] == 1)                 # 0.5 + 0.5, and the clamp at 1
    mask = occlusion_mask(_const_flow(0.0, -0.25))
    assert torch.allclose(mask[..., -1, :], torch.full_like(mask[..., -1, :], 0.75))


def test_non_finite_flow_splats_nothing():
    flow = torch.zeros(1, 2, 5, 5)
    flow[0, :, 2, 2] = float('nan')
    flow[0, 0, 0, 0] = float('inf')
    flow[0, 1, 4, 4] = 1e30
    mask = occlusion_mask(flow)
    assert torch.isfinite(mask).all()
    assert mask[0, 0, 2, 2] == 0 and mask[0, 0, 0, 0] == 0 and mask[0, 0, 4, 4] == 0
    assert mask.sum() == 22


def test_batch_elements_are_independent():
    g = torch.Generator().manual_seed(0)
    flow = 4.0 * torch.randn(3, 2, 10, 13, generator=g)
    batched = occlusion_mask(flow)
    for i in range(3):
        assert torch.equal(batched[i:i + 1], occlusion_mask(flow[i:i + 1]))


def test_visibility_agrees_with_ground_truth(pair):
    gt = pair.valid_ij[None]                                    # image-1 pixels seen in image 2
    f12, f21 = pair.flow_ij[None], pair.flow_ji[None]
    visible = occlusion_mask(f21) > 0.5
    assert 0.5 < gt.float().mean() < 0.8                        # the pair has real occlusions
    agreement = (visible == gt).float().mean().item()
    assert agreement > 0.96                                     # measured 0.967
    # a truly visible pixel is (almost) never called occluded; the errors are the other way,
    # mostly the one-pixel band next to the visible region that bilinear splatting leaks into
    assert (~visible[gt]).float().mean() < 0.001
    wrong = visible & ~gt
    next_to_visible = torch.nn.functional.max_pool2d(gt.float(), 3, 1, 1) > 0
    assert (wrong & next_to_visible).sum() > 0.75 * wrong.sum()        # measured 369 of 443
    # visibility x consistency, the original's valid mask
    valid = flow_valid_mask(f12, f21) > 0.5
    assert (valid == gt).float().mean() > 0.98                  # measured 0.984


# ------------------------------------------------------------------- F-B consistency

def test_exact_flows_are_consistent_and_corruption_is_flagged(pair):
    gt = pair.valid_ij[None]
    f12, f21 = pair.flow_ij[None].clone(), pair.flow_ji[None]
    consistent = fb_consistency_mask(f12, f21).bool()
    assert consistent.shape == gt.shape
    assert consistent[gt].float().mean() > 0.999               # measured 1.0000
    assert consistent[~gt].float().mean() < 0.1                # occluded matches disagree
    # corrupt a patch of visible pixels by 8 px
    patch = (slice(None), slice(None), slice(20, 30), slice(90, 110))
    assert gt[patch].all()
    f12[patch] += 8.0
    corrupted = fb_consistency_mask(f12, f21).bool()
    assert not corrupted[patch].any()
    outside = torch.ones_like(gt)
    outside[patch] = False
    assert torch.equal(corrupted[outside], consistent[outside])


def test_consistency_thresholds():
    # residual ||r|| vs max(beta * ||flow||, alpha), strict
    w = 120
    f12 = _const_flow(100.0, 0.0, w=w)
    ok = fb_consistency_mask(f12, _const_flow(-96.0, 0.0, w=w))   # |r| = 4 < 0.05 * 100 = 5
    bad = fb_consistency_mask(f12, _const_flow(-94.0, 0.0, w=w))  # |r| = 6
    assert torch.all(ok[..., :w - 100] == 1) and torch.all(bad[..., :w - 100] == 0)
    # matches leaving the image read a zero flow: |r| = 100 -> inconsistent
    assert torch.all(ok[..., w - 99:] == 0)
    small = _const_flow(1.0, 0.0, w=w)
    assert torch.all(fb_consistency_mask(small, _const_flow(1.9, 0.0, w=w))[..., :-1] == 1)
    assert torch.all(fb_consistency_mask(small, _const_flow(2.1, 0.0, w=w))[..., :-1] == 0)
    assert torch.all(fb_consistency_mask(small, _const_flow(-1.0, 2.9, w=w))[..., :-1] == 1)
    assert torch.all(fb_consistency_mask(small, _const_flow(-1.0, 3.0, w=w))[..., :-1] == 0)


def test_fb_difference_is_mean_of_absolute_residuals():
    f12 = _const_flow(2.0, 0.0, w=9).requires_grad_()
    d = fb_difference(f12, _const_flow(-1.0, 0.5, w=9))
    assert d.shape == (1, 1, 6, 9)
    assert torch.allclose(d[..., :-2], torch.full_like(d[..., :-2], 0.75))   # (1 + 0.5) / 2
    d.sum().backward()
    assert torch.isfinite(f12.grad).all()
    exact = fb_difference(_const_flow(2.0, -1.0), _const_flow(-2.0, 1.0))
    assert exact[..., 1:, :-2].abs().max() == 0


# -------------------------------------------------------------------------- scores

def test_score_map_and_rigid_score_values():
    valid = torch.tensor([1.0, 1.0, 0.0, 0.5]).view(1, 1, 1, 4)
    d_fb = torch.tensor([0.0, 0.9, 0.0, 0.15]).view(1, 1, 1, 4)
    assert torch.allclose(score_map(valid, d_fb).flatten(), torch.tensor([10.0, 1.0, 0.0, 2.0]))
    d_e = torch.tensor([0.0, 0.25, 0.4999, 0.5, 1.0, float('nan')]).view(1, 1, 1, 6)
    expected = torch.tensor([1.0, 0.8, 1.0 / 1.4999, 0.0, 0.0, 0.0])
    assert torch.allclose(rigid_score(d_e).flatten(), expected)
    assert rigid_score(d_e, threshold=1.5)[0, 0, 0, 4] == 0.5
    with pytest.raises(ValueError):
        score_map(valid, d_fb.view(1, 1, 4, 1))


# ------------------------------------------------------------------------ sampling

def _random_flow(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 5.0 * torch.randn(b, 2, h, w, generator=g, dtype=torch.float64)


def test_sampling_shapes_no_duplicates_and_matches():
    b, h, w = 2, 40, 50
    g = torch.Generator().manual_seed(1)
    score = torch.rand(b, 1, h, w, generator=g, dtype=torch.float64)
    flow = _random_flow(b, h, w).requires_grad_()
    c = sample_correspondences(score, flow, num=300, top_ratio=0.2,
                               generator=torch.Generator().manual_seed(2))
    assert c.x1.shape == (b, 300, 2) and c.x2.shape == (b, 300, 2)
    assert c.valid.shape == (b, 300) and c.valid.all() and c.count.tolist() == [300, 300]
    for i in range(b):
        assert c.index[i].unique().numel() == 300                     # without replacement
    u, v = c.x1[..., 0].long(), c.x1[..., 1].long()
    assert torch.equal(v * w + u, c.index)
    expected = c.x1 + torch.stack([flow[i, :, v[i], u[i]].T for i in range(b)])
    assert torch.allclose(c.x2, expected)
    # only the top 20 %: every sampled score is at least the 400th largest
    kth = score.reshape(b, -1).topk(400, dim=1).values[:, -1:]
    assert torch.all(c.score >= kth)
    assert torch.equal(c.score, score.reshape(b, -1).gather(1, c.index))
    c.x2.sum().backward()                                             # x2 follows the flow
    assert flow.grad.abs().sum() == 2 * b * 300


def test_sampling_is_reproducible():
    score = torch.ones(2, 1, 30, 40)
    flow = torch.zeros(2, 2, 30, 40)
    a = sample_correspondences(score, flow, 100, generator=torch.Generator().manual_seed(7))
    b = sample_correspondences(score, flow, 100, generator=torch.Generator().manual_seed(7))
    c = sample_correspondences(score, flow, 100, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.index, b.index) and torch.equal(a.x2, b.x2)
    assert not torch.equal(a.index, c.index)


def test_constant_score_has_no_spatial_bias():
    # the original's topk over a constant/binary map picked rows 83-222 of 256; ties must be
    # broken uniformly, so the samples cover the whole image evenly
    h, w = 256, 256
    score = torch.ones(1, 1, h, w)
    c = sample_correspondences(score, torch.zeros(1, 2, h, w), num=6000, top_ratio=0.2,
                               generator=torch.Generator().manual_seed(0))
    rows, cols = c.x1[0, :, 1], c.x1[0, :, 0]
    assert rows.min() <= 2 and rows.max() >= h - 3
    assert cols.min() <= 2 and cols.max() >= w - 3
    bands = torch.histc(rows, bins=8, min=0, max=h)                    # 750 expected per band
    assert bands.min() > 600 and bands.max() < 900
    bands = torch.histc(cols, bins=8, min=0, max=w)
    assert bands.min() > 600 and bands.max() < 900


def test_binary_mask_samples_only_ones_spread_over_them():
    h, w = 64, 64
    mask = torch.zeros(1, 1, h, w)
    mask[..., :, :32] = 1.0                                            # left half valid
    c = sample_correspondences(mask, torch.zeros(1, 2, h, w), num=500, top_ratio=0.3,
                               generator=torch.Generator().manual_seed(3))
    assert c.count.item() == 500
    assert torch.all(c.x1[0, :, 0] < 32)
    assert c.x1[0, :, 1].min() <= 1 and c.x1[0, :, 1].max() >= h - 2
    assert c.x1[0, :, 0].min() <= 1 and c.x1[0, :, 0].max() >= 30


def test_too_few_candidates_are_padded_with_zero_weight():
    b, h, w = 3, 20, 20
    score = torch.zeros(b, 1, h, w)
    score[0] = 1.0                                                     # plenty
    score[1, 0, 5, 3:13] = torch.arange(1.0, 11.0)                      # 10 candidates
    flow = _random_flow(b, h, w).float()
    flow[0, :, 0, 0] = float('nan')                                    # excluded pixel
    c = sample_correspondences(score, flow, num=50, top_ratio=0.5,
                               generator=torch.Generator().manual_seed(0))
    assert c.count.tolist() == [50, 10, 0]
    assert torch.equal(c.valid.sum(dim=1), c.count)
    assert c.valid[1, :10].all() and not c.valid[1, 10:].any()
    assert torch.isfinite(c.x1).all() and torch.isfinite(c.x2).all()
    assert 0 not in c.index[0].tolist()                                 # the NaN-flow pixel
    # padding repeats real samples of the same element, with weight and score 0
    assert set(c.index[1, 10:].tolist()) <= set(c.index[1, :10].tolist())
    assert torch.all(c.x1[1, :, 1] == 5)
    assert torch.all(c.score[1, 10:] == 0) and torch.all(c.weights[1, 10:] == 0)
    assert torch.equal(c.x1[2], c.x2[2]) and torch.all(c.weights[2] == 0)


def test_score_weighting_prefers_high_scores():
    h, w = 64, 64
    score = torch.ones(1, 1, h, w)
    score[..., :, 32:] = 9.0
    flow = torch.zeros(1, 2, h, w)
    frac = {}
    for weighting in ('uniform', 'score'):
        c = sample_correspondences(score, flow, num=400, top_ratio=1.0,
                                   generator=torch.Generator().manual_seed(0),
                                   weighting=weighting)
        assert c.index[0].unique().numel() == 400
        frac[weighting] = (c.x1[0, :, 0] >= 32).float().mean().item()
    assert 0.4 < frac['uniform'] < 0.6
    assert frac['score'] > 0.85                                        # ~0.9 expected


def test_sampling_rejects_bad_arguments():
    score, flow = torch.ones(1, 1, 4, 4), torch.zeros(1, 2, 4, 4)
    for kwargs in ({'num': 0}, {'top_ratio': 0.0}, {'top_ratio': 1.5}, {'weighting': 'x'}):
        with pytest.raises(ValueError):
            sample_correspondences(score, flow, **kwargs)
    with pytest.raises(ValueError):
        sample_correspondences(score, torch.zeros(1, 2, 4, 5))
