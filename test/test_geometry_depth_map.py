"""Tests of geometry.depth_map: triangulation along flow, transfer, log-depth fusion."""

import pytest
import torch

from trianflow_ros.data.synthetic import make_sequence
from trianflow_ros.geometry.depth_map import (fuse_log_depth, grid_points, sample_known,
                                              transfer_flow_depth, triangulate_flow_depth)
from trianflow_ros.geometry.distortion import distort_pixels, Distortion, undistort_pixels

H, W = 64, 160


@pytest.fixture(scope='module')
def pair():
    seq = make_sequence('forward', 3, H, W, seed=0)
    return seq.pair(0, 2), seq.K[None].double()


def test_triangulated_depth_is_exact(pair):
    p, K = pair
    valid = p.valid_ji[None].bool()
    d, s = triangulate_flow_depth(p.flow_ji[None].float(), valid, K, K, p.T_ji[None].double(),
                                  min_angle_deg=0.2, min_depth=0.01, max_sampson_px=0.5)
    assert d.shape == (1, 1, H, W) and s.shape == (1, 1, H, W) and d.dtype == torch.float32
    known = d > 0
    assert float(known.float().mean()) > 0.3
    gt = p.depth_j[None]
    assert float(((d - gt).abs() / gt)[known].max()) < 1e-4
    assert bool((s[known] > 0).all()) and bool((s[~known] == 0).all())
    # sigma = noise / parallax: smaller for nearer points (larger parallax) on average
    near = known & (gt < gt[known].median())
    assert float(s[near].median()) < float(s[known & ~near].median())


def test_triangulated_depth_in_float32_matches_float64(pair):
    """
    The float32 triangulation (the depth output's) agrees with float64.

    Far within the depth's own uncertainty: typically 1e-5 relative, at most 5 % of the
    pixel's log-depth sigma (the mid-point's determinant cancels at small ray angles, where
    the sigma is large).
    """
    p, K = pair
    valid = p.valid_ji[None].bool()
    args = (p.flow_ji[None].float(), valid, K, K, p.T_ji[None].double())
    kw = {'min_angle_deg': 0.2, 'min_depth': 0.01, 'max_sampson_px': 0.5}
    d64, s64 = triangulate_flow_depth(*args, **kw)
    d32, s32 = triangulate_flow_depth(*args, **kw, dtype=torch.float32)
    both = (d64 > 0) & (d32 > 0)
    assert int(both.sum()) >= 0.99 * int((d64 > 0).sum()) > 0
    rel = ((d32 - d64).abs() / d64)[both]
    assert float(rel.median()) < 1e-4
    assert float((rel / s64[both]).max()) < 0.05
    assert float(((s32 - s64).abs() / s64)[both].max()) < 1e-3


def test_transfer_is_exact_and_skips_unknown_neighbours(pair):
    p, K = pair
    valid = p.valid_ji[None].bool()
    depth_i = p.depth_i[None].clone()
    depth_i[..., :, : W // 2] = 0.0                                  # left half unknown
    sig = torch.where(depth_i > 0, torch.full_like(depth_i, 0.05), torch.zeros_like(depth_i))
    d, s = transfer_flow_depth(depth_i, sig, p.flow_ji[None].float(), valid, K,
                               p.T_ji[None].double())
    known = d > 0
    gt = p.depth_j[None]
    err = ((d - gt).abs() / gt)[known]
    # exact on the planes (inverse depth is interpolated) except where a bilinear read
    # straddles a depth edge between two surfaces (inherent to a dense map)
    assert float((err < 1e-4).float().mean()) > 0.85 and float(err.median()) < 1e-6
    assert torch.allclose(s[known], torch.full_like(s[known], 0.05))
    # a pixel whose match lands next to the unknown half gets no depth (no blend with zeros)
    x1 = grid_points(H, W).reshape(1, H, W, 2) + p.flow_ji.permute(1, 2, 0)[None].double()
    near_edge = (x1[..., 0] < W // 2 - 0.01) & (x1[..., 0] > W // 2 - 0.99)
    assert not bool(known[0, 0][near_edge[0]].any())


def test_fusion_inverse_variance_gate_and_unknown():
    a = torch.tensor([[[[2.0, 2.0, 0.0, 3.0]]]])
    sa = torch.tensor([[[[0.1, 0.1, 0.0, 0.01]]]])
    b = torch.tensor([[[[2.0 * 1.01, 0.0, 5.0, 6.0]]]])
    sb = torch.tensor([[[[0.1, 0.0, 0.2, 0.1]]]])
    d, s = fuse_log_depth(a, sa, b, sb)
    assert torch.allclose(d[..., 0], torch.tensor([[[2.0 * 1.01 ** 0.5]]]), rtol=1e-6)
    assert torch.allclose(s[..., 0], torch.tensor([[[0.1 / 2 ** 0.5]]]), rtol=1e-6)
    assert float(d[..., 1]) == 2.0 and float(d[..., 2]) == 5.0      # one side known
    assert float(d[..., 3]) == 3.0 and float(s[..., 3]) == pytest.approx(0.01)  # gate: certain


def test_sample_known_and_distortion_grid(pair):
    depth = torch.zeros(1, 1, 4, 4)
    depth[..., :2] = 5.0
    x = torch.tensor([[[0.5, 1.0], [1.5, 1.0], [2.5, 1.0]]], dtype=torch.float64)
    expected = torch.tensor([[5.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(sample_known(depth, x), expected)
    # with a distorted camera the triangulation takes the pinhole pixels of the raw grid
    p, K = pair
    dist = Distortion('plumb_bob', (-0.2, 0.05))

    def undistort(x):
        return undistort_pixels(x, K, dist)

    grid = undistort(grid_points(H, W))
    assert torch.allclose(distort_pixels(grid, K, dist), grid_points(H, W), atol=1e-8)
