"""vo.dense_inputs: the dense depth maps on every n-th pixel are the full maps' pixels."""

import pytest
import torch

from trianflow_ros.data.synthetic import make_sequence
from trianflow_ros.geometry.depth_map import (grid_points, transfer_flow_depth,
                                              triangulate_flow_depth)
from trianflow_ros.geometry.distortion import Distortion, PixelUndistorter
from trianflow_ros.vo.dense_inputs import DenseInputs

H, W = 64, 160


@pytest.fixture(scope='module')
def pair():
    seq = make_sequence('forward', 3, H, W, seed=0)
    return seq.pair(0, 2), seq.K[None].double(), seq


def _inputs(p, K, stride, undistort=None, grid=None):
    img = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0))
    return DenseInputs.at_stride(stride, img, img.flip(-1), K, K, p.flow_ij[None].float(),
                                 p.flow_ji[None].float(), undistort, grid)


def test_stride_one_is_the_identity(pair):
    p, K, _ = pair
    x = _inputs(p, K, 1)
    assert x.stride == 1 and x.flow_21 is not None and x.flow_21.shape == (1, 2, H, W)
    d = torch.rand(1, 1, H, W)
    assert x.strided(d) is d and x.full(d) is d
    with pytest.raises(ValueError, match='stride'):
        _inputs(p, K, 0)


@pytest.mark.parametrize('stride', [2, 3])
def test_strided_triangulation_and_transfer_are_the_full_maps_pixels(pair, stride):
    """Exact flow: the strided maps equal the full maps at pixels n*i, repeated n x n."""
    p, K, _ = pair
    kw = {'min_angle_deg': 0.2, 'min_depth': 0.01, 'max_sampson_px': 0.5}
    full_d, _ = triangulate_flow_depth(p.flow_ji[None].float(), p.valid_ji[None].bool(), K, K,
                                       p.T_ji[None].double(), **kw)
    x = _inputs(p, K, stride)
    h, w = -(-H // stride), -(-W // stride)
    assert x.flow_21.shape == (1, 2, h, w) and x.img1.shape == (1, 3, h, w)
    assert torch.allclose(x.K1[0, 0, 2], K[0, 0, 2] / stride)
    valid = x.strided(p.valid_ji[None].bool())
    d, s = triangulate_flow_depth(x.flow_21, valid, x.K1, x.K2, p.T_ji[None].double(),
                                  **{**kw, 'max_sampson_px': 0.5 / stride})
    ref = full_d[..., ::stride, ::stride]
    both = (d > 0) & (ref > 0)
    assert int(both.sum()) >= 0.95 * int((ref > 0).sum()) > 0
    assert float(((d - ref).abs() / ref)[both].max()) < 1e-4
    up = x.full(d)
    assert up.shape == (1, 1, H, W)
    assert torch.equal(up[..., ::stride, ::stride], d)
    odd = up[..., 1::stride, 1::stride]                          # repeated, not interpolated
    assert torch.equal(odd, d[..., :odd.shape[2], :odd.shape[3]])
    # the transfer of the (strided) keyframe depth along the strided flow
    t, _ = transfer_flow_depth(x.strided(p.depth_i[None]), None, x.flow_21, valid, x.K1,
                               p.T_ji[None].double())
    gt = p.depth_j[None][..., ::stride, ::stride]
    known = t > 0
    assert float(known.float().mean()) > 0.3
    assert float(((t - gt).abs() / gt)[known].median()) < 1e-5


def test_strided_undistortion_is_the_full_grids(pair):
    p, K, _ = pair
    und = PixelUndistorter(K, Distortion('plumb_bob', (-0.2, 0.05)), (H, W))
    x = _inputs(p, K, 2, und, und.grid)
    g = und.grid.reshape(1, H, W, 2)[:, ::2, ::2].reshape(1, -1, 2) / 2
    assert torch.equal(x.grid, g)
    raw = grid_points(H, W)[:, :50] / 2
    assert torch.allclose(x.undistort(raw), und(raw * 2) / 2)
