"""Tests of geometry.warp: backward warping, sparse sampling and rigid flow."""

import cv2
import numpy as np
import pytest
import torch

from trianflow_ros.geometry.camera import pixel_grid
from trianflow_ros.geometry.se3 import se3_exp
from trianflow_ros.geometry.warp import backward_warp, normalize_pixels, rigid_flow, sample_at


def _image(b=2, c=3, h=12, w=17, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g, dtype=dtype)


@pytest.mark.parametrize('align_corners', [True, False])
def test_zero_flow_is_identity(align_corners):
    img = _image(dtype=torch.float32)
    out = backward_warp(img, torch.zeros(2, 2, 12, 17), align_corners=align_corners)
    assert (out - img).abs().max() < 1e-6


def test_zero_flow_identity_full_kitti_size():
    img = _image(h=256, w=832, c=1, b=1)
    out = backward_warp(img, torch.zeros(1, 2, 256, 832, dtype=torch.float64))
    assert (out - img).abs().max() < 1e-12
    # float32: the normalised coordinate itself is rounded (about W * 3e-8 px); on white noise
    # (the worst case, neighbour differences up to 1) that stays below 1e-4
    out = backward_warp(img.float(), torch.zeros(1, 2, 256, 832))
    assert (out - img.float()).abs().max() < 1e-4


def test_mixing_conventions_is_not_identity():
    # what broke the original on torch >= 1.3: True-style normalisation, False-style sampling
    img = _image(b=1, c=1)
    grid = normalize_pixels(pixel_grid(1, 12, 17, dtype=img.dtype).permute(0, 2, 3, 1), 12, 17,
                            align_corners=True)
    wrong = torch.nn.functional.grid_sample(img, grid, mode='bilinear', align_corners=False)
    assert (wrong - img).abs().max() > 0.05


def test_integer_shift_equals_shifted_image():
    img = _image()
    flow = torch.zeros(2, 2, 12, 17, dtype=torch.float64)
    flow[:, 0] = 3.0                                  # sample 3 columns to the right
    flow[:, 1] = -2.0                                 # and 2 rows up
    out = backward_warp(img, flow)
    assert torch.allclose(out[:, :, 2:, :-3], img[:, :, :-2, 3:], atol=1e-12)
    assert torch.all(out[:, :, :2] == 0) and torch.all(out[:, :, :, -3:] == 0)   # zeros padding
    border = backward_warp(img, flow, padding_mode='border')
    assert torch.allclose(border[:, :, 0, :-3], img[:, :, 0, 3:])


def test_matches_cv2_remap_interior():
    h, w = 20, 30
    img = _image(b=1, c=1, h=h, w=w)
    g = torch.Generator().manual_seed(1)
    flow = 3.0 * torch.randn(1, 2, h, w, generator=g, dtype=torch.float64)
    out = backward_warp(img, flow)[0, 0].numpy()
    grid = pixel_grid(1, h, w, dtype=torch.float64) + flow
    map_x = grid[0, 0].numpy().astype(np.float32)
    map_y = grid[0, 1].numpy().astype(np.float32)
    ref = cv2.remap(img[0, 0].numpy().astype(np.float32), map_x, map_y, cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    assert inside.sum() > 0.5 * h * w
    # cv2 uses 5-bit fixed-point interpolation weights: agreement to ~1/32 of the range
    assert np.abs(out - ref)[inside].max() < 2e-2
    assert np.abs(out - ref)[inside].mean() < 5e-3


def test_sample_at_matches_backward_warp_and_hand_value():
    img = _image()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 7, 2, generator=g, dtype=torch.float64) * torch.tensor([16.0, 11.0])
    vals = sample_at(img, x)
    assert vals.shape == (2, 7, 3)
    # bilinear by hand
    u, v = x[..., 0], x[..., 1]
    u0, v0 = u.floor().long(), v.floor().long()
    a, b = u - u0, v - v0
    bi = torch.arange(2)[:, None]

    def at(vv, uu):
        return img[bi, :, vv, uu]                   # (B, N, C)

    ref = ((1 - a) * (1 - b))[..., None] * at(v0, u0) + (a * (1 - b))[..., None] * at(v0, u0 + 1) \
        + ((1 - a) * b)[..., None] * at(v0 + 1, u0) + (a * b)[..., None] * at(v0 + 1, u0 + 1)
    assert torch.allclose(vals, ref, atol=1e-12)
    # integer pixels give the pixel values
    xi = torch.tensor([[[0.0, 0.0], [16.0, 11.0], [5.0, 3.0]]] * 2, dtype=torch.float64)
    assert torch.allclose(sample_at(img, xi)[:, 2], img[:, :, 3, 5])
    assert torch.allclose(sample_at(img, xi)[:, 1], img[:, :, 11, 16])


def _scene(b=2, h=24, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    depth = 2.0 + 3.0 * torch.rand(b, 1, h, w, generator=g, dtype=torch.float64)
    K = torch.tensor([[30.0, 0.0, 15.5], [0.0, 28.0, 11.5], [0.0, 0.0, 1.0]],
                     dtype=torch.float64).expand(b, 3, 3).clone()
    xi = 0.05 * torch.randn(b, 6, generator=g, dtype=torch.float64)
    return depth, K, se3_exp(xi)


def test_rigid_flow_matches_explicit_projection():
    depth, K, T = _scene()
    b, _, h, w = depth.shape
    flow, z2 = rigid_flow(depth, T, K)
    assert flow.shape == (b, 2, h, w) and z2.shape == (b, 1, h, w)
    for i in range(b):
        for (v, u) in [(0, 0), (5, 7), (23, 31), (12, 20)]:
            d = depth[i, 0, v, u]
            X1 = d * torch.linalg.solve(K[i], torch.tensor([u, v, 1.0], dtype=torch.float64))
            X2 = T[i, :3, :3] @ X1 + T[i, :3, 3]
            p = K[i] @ X2
            assert torch.allclose(flow[i, :, v, u], p[:2] / p[2] - torch.tensor([u, v]),
                                  atol=1e-10)
            assert torch.allclose(z2[i, 0, v, u], X2[2])


def test_rigid_flow_hand_values():
    depth, K, _ = _scene(b=1)
    flow, z2 = rigid_flow(depth, torch.eye(4, dtype=torch.float64)[None], K)
    assert flow.abs().max() < 1e-12 and torch.allclose(z2, depth)
    # fronto-parallel plane at z = 4: sideways motion tx gives flow_u = fx * tx / 4 everywhere
    plane = torch.full_like(depth, 4.0)
    T = torch.eye(4, dtype=torch.float64)[None].clone()
    T[0, 0, 3] = 0.2
    flow, z2 = rigid_flow(plane, T, K)
    assert torch.allclose(flow[:, 0], torch.full_like(flow[:, 0], 30.0 * 0.2 / 4.0))
    assert flow[:, 1].abs().max() < 1e-12 and torch.allclose(z2, plane)
    # forward motion tz: pixels move away from the principal point by a factor z / (z - tz)
    T = torch.eye(4, dtype=torch.float64)[None].clone()
    T[0, 2, 3] = -1.0                                # X_2 = X_1 - (0, 0, 1)
    flow, z2 = rigid_flow(plane, T, K)
    grid = pixel_grid(1, 24, 32, dtype=torch.float64)
    c = torch.tensor([15.5, 11.5], dtype=torch.float64)[None, :, None, None]
    assert torch.allclose(flow, (grid - c) * (4.0 / 3.0 - 1.0), atol=1e-12)
    assert torch.allclose(z2, plane - 1.0)


def test_shape_checks():
    with pytest.raises(ValueError, match='flow'):
        backward_warp(torch.zeros(1, 3, 4, 5), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match='x'):
        sample_at(torch.zeros(1, 3, 4, 5), torch.zeros(1, 7, 3))
    with pytest.raises(ValueError, match='T_21'):
        rigid_flow(torch.ones(1, 1, 4, 5), torch.eye(4), torch.eye(3)[None])


def test_gradcheck_float64():
    img = _image(b=1, c=2, h=5, w=6).requires_grad_()
    g = torch.Generator().manual_seed(3)
    # non-integer flow keeps every sample away from the kinks of bilinear interpolation
    flow = (0.25 + 0.5 * torch.rand(1, 2, 5, 6, generator=g, dtype=torch.float64)
            + torch.randint(-1, 2, (1, 2, 5, 6), generator=g)).requires_grad_()
    assert torch.autograd.gradcheck(backward_warp, (img, flow))
    assert torch.autograd.gradcheck(
        lambda a, f: backward_warp(a, f, padding_mode='border', align_corners=False), (img, flow))
    x = (torch.tensor([[[1.3, 2.6], [4.2, 0.4], [2.7, 3.1]]], dtype=torch.float64)
         ).requires_grad_()
    assert torch.autograd.gradcheck(sample_at, (img, x))
    depth, K, T = _scene(b=1, h=4, w=5)
    depth.requires_grad_()
    T.requires_grad_()
    assert torch.autograd.gradcheck(lambda d, t: rigid_flow(d, t, K), (depth, T))


@pytest.mark.parametrize('stride', [1, 2, 3])
def test_strided_warp_is_backward_warp_at_the_strided_pixels(stride):
    from trianflow_ros.geometry.warp import strided_warp
    g = torch.Generator().manual_seed(4)
    a = torch.rand(2, 3, 17, 23, generator=g, dtype=torch.float64)
    b = torch.rand(2, 1, 17, 23, generator=g, dtype=torch.float64)
    flow = 4.0 * torch.randn(2, 2, 17, 23, generator=g, dtype=torch.float64)
    full = backward_warp(torch.cat((a, b), 1), flow)
    out = strided_warp([a, b], flow[..., ::stride, ::stride].contiguous(), stride)
    assert out.shape == (2, 4, -(-17 // stride), -(-23 // stride))
    assert torch.equal(out, full[..., ::stride, ::stride])
    # an expanded view is read in place, as its copy would be
    ones = torch.ones(1, 1, 1, 1, dtype=torch.float64).expand(2, 1, 17, 23)
    assert torch.equal(strided_warp([ones], flow, 1), backward_warp(ones.contiguous(), flow))
    with pytest.raises(ValueError, match='flow must have shape'):
        strided_warp([a], flow, stride + 1)
    with pytest.raises(ValueError, match='stride'):
        strided_warp([a], flow, 0)
