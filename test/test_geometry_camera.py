"""Tests of geometry.camera: pinhole projection, back-projection and intrinsics updates."""

import cv2
import numpy as np
import pytest
import torch

from trianflow_ros.geometry.camera import (
    backproject_depth, backproject_pixels, crop_intrinsics, from_homogeneous, pixel_grid,
    project, resize_intrinsics, to_homogeneous, unproject)

K_SKEW = torch.tensor([[500.0, 2.0, 320.0], [0.0, 400.0, 240.0], [0.0, 0.0, 1.0]],
                      dtype=torch.float64)


def _rand_K(b, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = torch.zeros(b, 3, 3, dtype=dtype)
    K[:, 0, 0] = 300 + 400 * torch.rand(b, generator=g, dtype=dtype)
    K[:, 1, 1] = 300 + 400 * torch.rand(b, generator=g, dtype=dtype)
    K[:, 0, 1] = torch.randn(b, generator=g, dtype=dtype)
    K[:, 0, 2] = 300 + 40 * torch.rand(b, generator=g, dtype=dtype)
    K[:, 1, 2] = 200 + 40 * torch.rand(b, generator=g, dtype=dtype)
    K[:, 2, 2] = 1.0
    return K


def test_pixel_grid_values_and_shape():
    g = pixel_grid(2, 3, 4, dtype=torch.float64)
    assert g.shape == (2, 2, 3, 4)
    assert g[1, 0, 2, 3] == 3 and g[1, 1, 2, 3] == 2        # u = column, v = row
    assert torch.equal(g[0, 0, 0], torch.arange(4, dtype=torch.float64))


def test_homogeneous_round_trip_and_sign():
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    assert torch.allclose(from_homogeneous(to_homogeneous(x)), x)
    xh = torch.tensor([[2.0, 4.0, 2.0], [1.0, 1.0, -1e-20]], dtype=torch.float64)
    out = from_homogeneous(xh)
    assert torch.allclose(out[0], torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert torch.isfinite(out).all() and (out[1] < 0).all()    # keeps the sign of w


def test_project_hand_values():
    X = torch.tensor([[[1.0, 2.0, 4.0]]], dtype=torch.float64)
    px, z = project(X, K_SKEW[None])
    # u = 500 * 0.25 + 2 * 0.5 + 320, v = 400 * 0.5 + 240
    assert torch.allclose(px, torch.tensor([[[446.0, 440.0]]], dtype=torch.float64))
    assert z.item() == 4.0


def test_project_matches_cv2():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(1, 50, 3, generator=g, dtype=torch.float64)
    X[..., 2] = X[..., 2].abs() + 1.0
    K = K_SKEW.clone()
    K[0, 1] = 0.0                                  # cv2.projectPoints has no skew
    ref, _ = cv2.projectPoints(X[0].numpy(), np.zeros(3), np.zeros(3), K.numpy(), None)
    px, _ = project(X, K[None])
    assert np.allclose(px[0].numpy(), ref[:, 0], atol=1e-9)


def test_project_unproject_round_trip_batched():
    b, n = 3, 40
    K = _rand_K(b)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(b, n, 2, generator=g, dtype=torch.float64) * 600
    rays = unproject(x, K)
    assert rays.shape == (b, n, 3) and torch.all(rays[..., 2] == 1)
    depth = 1 + 10 * torch.rand(b, n, generator=g, dtype=torch.float64)
    px, z = project(rays * depth[..., None], K)
    assert torch.allclose(px, x, atol=1e-9) and torch.allclose(z, depth)
    # equals the explicit inverse
    ref = to_homogeneous(x) @ torch.linalg.inv(K).transpose(1, 2)
    assert torch.allclose(rays, ref, atol=1e-12)


def test_backproject_depth_reprojects_to_grid():
    b, h, w = 2, 5, 7
    K = _rand_K(b)
    depth = 1 + torch.rand(b, 1, h, w, dtype=torch.float64)
    pts = backproject_depth(depth, K)
    assert pts.shape == (b, 3, h, w)
    assert torch.allclose(pts[:, 2:], depth)
    px, _ = project(pts.reshape(b, 3, -1).transpose(1, 2), K)
    grid = pixel_grid(b, h, w, dtype=torch.float64).reshape(b, 2, -1).transpose(1, 2)
    assert torch.allclose(px, grid, atol=1e-9)
    # backproject_pixels at the integer grid gives the same points
    sparse = backproject_pixels(grid, depth.reshape(b, -1), K)
    assert torch.allclose(sparse, pts.reshape(b, 3, -1).transpose(1, 2))


def _blob(h, w, u0, v0, sigma=6.0):
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.exp(-((u - u0) ** 2 + (v - v0) ** 2) / (2 * sigma ** 2))


def _centroid(img):
    v, u = np.mgrid[0:img.shape[0], 0:img.shape[1]].astype(np.float64)
    return np.array([(u * img).sum() / img.sum(), (v * img).sum() / img.sum()])


@pytest.mark.parametrize('dst_hw', [(60, 200), (150, 96), (257, 301)])
def test_resize_intrinsics_matches_cv2_resize(dst_hw):
    src_hw = (96, 128)
    K = torch.tensor([[[110.0, 0.0, 61.3], [0.0, 100.0, 45.7], [0.0, 0.0, 1.0]]],
                     dtype=torch.float64)
    X = torch.tensor([[[0.1, -0.05, 1.0]]], dtype=torch.float64)
    u0, v0 = project(X, K)[0][0, 0].numpy()
    img = _blob(*src_hw, u0, v0, sigma=8.0)
    resized = cv2.resize(img, (dst_hw[1], dst_hw[0]), interpolation=cv2.INTER_LINEAR)
    K2 = resize_intrinsics(K, src_hw, dst_hw)
    predicted = project(X, K2)[0][0, 0].numpy()
    assert np.abs(_centroid(resized) - predicted).max() < 0.05
    # the naive scaling (no half-pixel shift) is measurably wrong here
    naive = K.clone()
    naive[0, 0] *= dst_hw[1] / src_hw[1]
    naive[0, 1] *= dst_hw[0] / src_hw[0]
    assert np.abs(_centroid(resized) - project(X, naive)[0][0, 0].numpy()).max() > 0.1


def test_crop_intrinsics_matches_array_crop():
    K = torch.tensor([[[110.0, 0.0, 61.3], [0.0, 100.0, 45.7], [0.0, 0.0, 1.0]]],
                     dtype=torch.float64)
    X = torch.tensor([[[0.05, 0.02, 1.0]]], dtype=torch.float64)
    u0, v0 = project(X, K)[0][0, 0].numpy()
    img = _blob(96, 128, u0, v0)
    top, left = 11, 23
    crop = img[top:, left:]
    predicted = project(X, crop_intrinsics(K, top, left))[0][0, 0].numpy()
    assert np.abs(_centroid(crop) - predicted).max() < 1e-6
    assert torch.equal(crop_intrinsics(K, 0, 0), K)


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match='x'):
        unproject(torch.zeros(1, 5, 3), torch.eye(3)[None])
    with pytest.raises(ValueError, match='K'):
        project(torch.ones(1, 5, 3), torch.eye(3))
    with pytest.raises(ValueError, match='depth'):
        backproject_depth(torch.ones(1, 2, 4, 4), torch.eye(3)[None])


def test_dtype_follows_input():
    K = _rand_K(1, dtype=torch.float32)
    x = torch.rand(1, 4, 2) * 100
    assert unproject(x, K).dtype == torch.float32
    assert backproject_depth(torch.ones(1, 1, 2, 2), K).dtype == torch.float32


def test_gradcheck_float64():
    K = _rand_K(2).requires_grad_()
    g = torch.Generator().manual_seed(3)
    X = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    X[..., 2] = X[..., 2].abs() + 2.0
    X.requires_grad_()
    x = (100 * torch.rand(2, 6, 2, generator=g, dtype=torch.float64)).requires_grad_()
    depth = (1 + torch.rand(2, 1, 3, 4, generator=g, dtype=torch.float64)).requires_grad_()
    d = (1 + torch.rand(2, 6, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, k: project(a, k)[0], (X, K))
    assert torch.autograd.gradcheck(unproject, (x, K))
    assert torch.autograd.gradcheck(backproject_depth, (depth, K))
    assert torch.autograd.gradcheck(backproject_pixels, (x, d, K))
    assert torch.autograd.gradcheck(
        lambda k: resize_intrinsics(k, (10, 20), (7, 31)), (K,))
