"""Tests of geometry/homography.py: DLT, errors, rotation model, batched RANSAC."""

import math

import cv2
import numpy as np
import pytest
import torch

from trianflow_ros.geometry.camera import from_homogeneous, project, to_homogeneous, unproject
from trianflow_ros.geometry.homography import (homography_4pt, homography_dlt,
                                               ransac_homography, ransac_rotation, RansacFit,
                                               rotation_from_bearings, rotation_homography,
                                               sampson_homography, transfer_error)
from trianflow_ros.geometry.se3 import rotation_error_deg, so3_exp

WIDTH, HEIGHT = 1241, 376


@pytest.fixture(autouse=True)
def single_thread():
    """
    Run these tests on one intra-op thread, then restore the setting.

    The many tiny matrix products of batched RANSAC were 5-10x slower with two OpenMP threads
    on a shared 2-core machine; results do not depend on the thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kitti_k(batch=1, dtype=torch.float64):
    """KITTI-like intrinsics (B, 3, 3)."""
    K = torch.tensor([[718.0, 0.0, 607.0], [0.0, 718.0, 185.0], [0.0, 0.0, 1.0]], dtype=dtype)
    return K.expand(batch, 3, 3).clone()


def random_pixels(batch, n, g, dtype=torch.float64):
    """Uniform pixels inside a KITTI image, (B, N, 2)."""
    scale = torch.tensor([WIDTH - 1.0, HEIGHT - 1.0], dtype=dtype)
    return torch.rand(batch, n, 2, generator=g, dtype=dtype) * scale


def random_rotations(batch, max_deg, g, dtype=torch.float64):
    """Rotations of random axes and angles up to max_deg, (B, 3, 3)."""
    phi = torch.randn(batch, 3, generator=g, dtype=dtype)
    phi = phi / phi.norm(dim=-1, keepdim=True)
    ang = torch.rand(batch, 1, generator=g, dtype=dtype) * math.radians(max_deg)
    return so3_exp(phi * ang)


def plane_scene(batch, n, g, dtype=torch.float64):
    """
    Points on a plane seen by two cameras; returns x1, x2, the true H and K.

    The plane n^T X = d lies in camera 1's frame; with X2 = R X1 + t every point of the plane
    obeys X2 = (R + t n^T / d) X1, so H = K (R + t n^T / d) K^-1 (H&Z Result 13.1).
    """
    K = kitti_k(batch, dtype)
    R = random_rotations(batch, 5.0, g, dtype)
    t = torch.randn(batch, 3, generator=g, dtype=dtype) * 0.3
    normal = torch.tensor([0.1, -0.3, -1.0], dtype=dtype).expand(batch, 3)
    normal = normal / normal.norm(dim=-1, keepdim=True)
    d = -12.0 * torch.ones(batch, dtype=dtype)                # plane about 12 m ahead
    x1 = random_pixels(batch, n, g, dtype)
    rays = unproject(x1, K)                                   # z = 1
    depth = d[:, None] / (rays @ normal.unsqueeze(-1)).squeeze(-1)
    X1 = rays * depth.unsqueeze(-1)
    x2, z2 = project(X1 @ R.transpose(1, 2) + t.unsqueeze(1), K)
    assert bool((z2 > 0).all()) and bool((depth > 0).all())
    H = K @ (R + t.unsqueeze(-1) @ (normal / d[:, None]).unsqueeze(1)) @ torch.linalg.inv(K)
    return x1, x2, H, K


def rotation_scene(batch, n, g, max_deg=5.0, dtype=torch.float64):
    """Pure rotation: x2 = K R K^-1 x1 exactly; returns x1, x2, R, K."""
    K = kitti_k(batch, dtype)
    R = random_rotations(batch, max_deg, g, dtype)
    x1 = random_pixels(batch, n, g, dtype)
    x2, _ = project(unproject(x1, K) @ R.transpose(1, 2), K)
    return x1, x2, R, K


def normalise(H):
    """Scale homographies so that H[2, 2] = 1."""
    return H / H[:, 2:, 2:]


def add_outliers(x2, fraction, g):
    """Replace a fraction of x2 by uniform random pixels; returns x2 and the outlier mask."""
    out = torch.rand(x2.shape[:2], generator=g) < fraction
    junk = random_pixels(x2.shape[0], x2.shape[1], g, x2.dtype)
    return torch.where(out.unsqueeze(-1), junk, x2), out


# ---------------------------------------------------------------------------------------------
# homography_dlt
# ---------------------------------------------------------------------------------------------

def test_dlt_smoke_minimal_set():
    g = torch.Generator().manual_seed(0)
    x1, x2, H_true, _ = plane_scene(1, 4, g, torch.float32)
    H = homography_dlt(x1, x2)
    assert H.shape == (1, 3, 3) and H.dtype == torch.float32
    assert torch.allclose(H.flatten(1).norm(dim=-1), torch.ones(1), atol=1e-5)
    assert float(torch.linalg.det(H)) > 0
    assert float(transfer_error(H, x1, x2).max()) < 0.05


def test_dlt_exact_on_plane_scene_float64():
    g = torch.Generator().manual_seed(1)
    x1, x2, H_true, _ = plane_scene(3, 50, g)
    H = homography_dlt(x1, x2)
    assert torch.allclose(normalise(H), normalise(H_true), rtol=1e-8, atol=1e-9)
    assert float(transfer_error(H, x1, x2).max()) < 1e-7
    assert float(transfer_error(H, x1, x2, symmetric=True).max()) < 1e-7
    assert float(sampson_homography(H, x1, x2).max()) < 1e-7


def test_dlt_float32_is_accurate():
    g = torch.Generator().manual_seed(2)
    x1, x2, _, _ = plane_scene(2, 200, g)
    H = homography_dlt(x1.float(), x2.float())
    assert float(transfer_error(H.double(), x1, x2).max()) < 0.02


def test_dlt_matches_opencv():
    g = torch.Generator().manual_seed(3)
    x1, x2, _, _ = plane_scene(1, 100, g)
    # noise-free: the same matrix (OpenCV's is accurate to about 1e-6 relative)
    Hc, _ = cv2.findHomography(x1[0].numpy(), x2[0].numpy(), 0)
    H = normalise(homography_dlt(x1, x2))[0].numpy()
    np.testing.assert_allclose(H, Hc, rtol=1e-4, atol=1e-6)
    x2_cv = from_homogeneous(to_homogeneous(x1) @ torch.from_numpy(Hc)[None].transpose(1, 2))
    assert float((x2_cv - x2).norm(dim=-1).max()) < 1e-3
    assert float(transfer_error(torch.from_numpy(H)[None], x1, x2).max()) < 1e-7
    # 0.5 px noise: OpenCV's least squares (refined by Levenberg-Marquardt on the transfer error)
    # and the algebraic DLT agree to a small fraction of the noise
    xn = x2 + 0.5 * torch.randn(x2.shape, generator=g, dtype=x2.dtype)
    Hc, _ = cv2.findHomography(x1[0].numpy(), xn[0].numpy(), 0)
    H = homography_dlt(x1, xn)
    Hc = torch.from_numpy(Hc)[None]
    x2_cv = from_homogeneous(to_homogeneous(x1) @ Hc.transpose(1, 2))
    assert float(transfer_error(H, x1, x2_cv).max()) < 0.1
    e_ours, e_cv = transfer_error(H, x1, xn).mean(), transfer_error(Hc, x1, xn).mean()
    assert float(e_ours) < 1.02 * float(e_cv)


def test_dlt_weights_select_points():
    g = torch.Generator().manual_seed(4)
    x1, x2, H_true, _ = plane_scene(1, 40, g)
    bad = x2.clone()
    bad[:, 20:] += 30.0                                       # garbage on half the points
    w = torch.zeros(1, 40, dtype=x1.dtype)
    w[:, :20] = torch.rand(1, 20, generator=g, dtype=x1.dtype) + 0.5
    H = homography_dlt(x1, bad, w)
    assert torch.allclose(normalise(H), normalise(H_true), rtol=1e-7, atol=1e-8)
    assert float(transfer_error(homography_dlt(x1, bad), x1, x2).max()) > 1.0


def test_dlt_gradcheck_float64():
    g = torch.Generator().manual_seed(5)
    x1, x2, _, _ = plane_scene(1, 6, g)
    x2 = x2 + 0.5 * torch.randn(x2.shape, generator=g, dtype=x2.dtype)
    w = torch.rand(1, 6, generator=g, dtype=x1.dtype) + 0.5
    x1, x2, w = (t.clone().requires_grad_(True) for t in (x1, x2, w))
    assert torch.autograd.gradcheck(homography_dlt, (x1, x2, w), eps=1e-6, atol=1e-6)


def test_4pt_exact_and_equal_to_dlt():
    g = torch.Generator().manual_seed(6)
    x1, x2, H_true, _ = plane_scene(64, 4, g)
    H = homography_4pt(x1, x2)
    assert H.shape == (64, 3, 3) and H.dtype == torch.float64
    assert torch.allclose(normalise(H), normalise(H_true), rtol=1e-7, atol=1e-8)
    assert float(transfer_error(H, x1, x2).max()) < 1e-7
    # with noise the minimal set still has one exact solution: the DLT's
    xn = x2 + 0.5 * torch.randn(x2.shape, generator=g, dtype=x2.dtype)
    H, Hd = homography_4pt(x1, xn), homography_dlt(x1, xn)
    assert torch.allclose(H, Hd, rtol=1e-6, atol=1e-8)
    assert torch.allclose(H.flatten(1).norm(dim=-1), torch.ones(64, dtype=H.dtype))
    assert bool((torch.linalg.det(H) > 0).all())
    # float32, as the motion classification runs it
    H32 = homography_4pt(x1.float(), x2.float())
    assert H32.dtype == torch.float32
    assert float(transfer_error(H32.double(), x1, x2).max()) < 0.05


def test_4pt_degenerate_set_is_zero_not_nan():
    x1 = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]], dtype=torch.float64)
    H = homography_4pt(x1, x1 + 1.0)                  # all 4 points on one line
    assert bool(torch.isfinite(H).all())
    assert float(H.abs().max()) == 0.0


def test_4pt_gradcheck_float64():
    g = torch.Generator().manual_seed(7)
    x1, x2, _, _ = plane_scene(2, 4, g)
    x2 = x2 + 0.5 * torch.randn(x2.shape, generator=g, dtype=x2.dtype)
    x1, x2 = (t.clone().requires_grad_(True) for t in (x1, x2))
    assert torch.autograd.gradcheck(homography_4pt, (x1, x2), eps=1e-6, atol=1e-6)


def test_transfer_error_values():
    H = torch.tensor([[[1.0, 0.0, 3.0], [0.0, 1.0, 4.0], [0.0, 0.0, 1.0]]])
    x = torch.tensor([[[10.0, 20.0], [0.0, 0.0]]])
    assert torch.allclose(transfer_error(H, x, x), torch.full((1, 2), 5.0))
    assert torch.allclose(transfer_error(H, x, x, symmetric=True),
                          torch.full((1, 2), math.sqrt(50.0)))


def test_sampson_homography_is_exact_for_affine_maps():
    """For x2 = A x1 + c the variety is linear: the R^4 distance is r^T (I + A A^T)^-1 r."""
    g = torch.Generator().manual_seed(6)
    A = torch.tensor([[1.1, 0.2], [-0.1, 0.9]], dtype=torch.float64)
    c = torch.tensor([5.0, -3.0], dtype=torch.float64)
    H = torch.eye(3, dtype=torch.float64)[None].clone()
    H[0, :2, :2], H[0, :2, 2] = A, c
    x1 = random_pixels(1, 30, g)
    x2 = x1 @ A.T + c + torch.randn(1, 30, 2, generator=g, dtype=torch.float64)
    r = x2 - x1 @ A.T - c
    S = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + A @ A.T)
    expected = torch.einsum('bni,ij,bnj->bn', r, S, r).sqrt()
    assert torch.allclose(sampson_homography(H, x1, x2), expected, rtol=1e-9)
    assert torch.allclose(sampson_homography(-7.0 * H, x1, x2), expected, rtol=1e-9)


def test_batch_shapes():
    g = torch.Generator().manual_seed(7)
    x1, x2, _, K = plane_scene(3, 37, g, torch.float32)
    H = homography_dlt(x1, x2)
    assert H.shape == (3, 3, 3)
    assert transfer_error(H, x1, x2).shape == (3, 37)
    assert transfer_error(H, x1, x2, symmetric=True).shape == (3, 37)
    assert sampson_homography(H, x1, x2).shape == (3, 37)
    fit = ransac_homography(x1, x2, num_hypotheses=16, generator=g)
    assert isinstance(fit, RansacFit)
    assert fit.model.shape == (3, 3, 3) and fit.inliers.shape == (3, 37)
    assert fit.inliers.dtype == torch.bool and fit.num_inliers.shape == (3,)
    assert fit.score.shape == (3,)
    b1, b2 = unproject(x1, K), unproject(x2, K)
    assert rotation_from_bearings(b1, b2).shape == (3, 3, 3)
    fit = ransac_rotation(x1, x2, K, K, num_hypotheses=16, generator=g)
    assert fit.model.shape == (3, 3, 3) and fit.inliers.shape == (3, 37)
    assert rotation_homography(fit.model, K, K).shape == (3, 3, 3)


def test_bad_shapes_raise():
    x = torch.zeros(2, 10, 2)
    with pytest.raises(ValueError, match='x2'):
        homography_dlt(x, torch.zeros(2, 10, 3))
    with pytest.raises(ValueError, match='weights'):
        homography_dlt(x, x, torch.ones(2, 9))
    with pytest.raises(ValueError, match='H'):
        transfer_error(torch.eye(3), x, x)
    with pytest.raises(ValueError, match='K1'):
        ransac_rotation(x, x, torch.eye(3), torch.eye(3).expand(2, 3, 3))
    with pytest.raises(ValueError, match='threshold_px'):
        ransac_homography(x, x + 1.0, threshold_px=0.0)


# ---------------------------------------------------------------------------------------------
# ransac_homography
# ---------------------------------------------------------------------------------------------

def test_ransac_homography_40_percent_outliers():
    g = torch.Generator().manual_seed(8)
    x1, x2, H_true, _ = plane_scene(2, 400, g)
    xn = x2 + 0.5 * torch.randn(x2.shape, generator=g, dtype=x2.dtype)
    xn, out = add_outliers(xn, 0.4, g)
    fit = ransac_homography(x1.float(), xn.float(), threshold_px=2.0,
                            generator=torch.Generator().manual_seed(0))
    inl = fit.inliers
    recall = (inl & ~out).sum(-1) / (~out).sum(-1)
    precision = (inl & ~out).sum(-1) / inl.sum(-1)
    assert bool((recall > 0.97).all()) and bool((precision > 0.99).all())
    # the model maps the true inlier points where the true H does, to a fraction of the noise
    err = transfer_error(fit.model.double(), x1, x2)
    assert float(err.mean()) < 0.15
    # OpenCV's RANSAC agrees on the inlier set
    for b in range(2):
        _, mask = cv2.findHomography(x1[b].numpy(), xn[b].numpy(), cv2.RANSAC, 2.0)
        agree = (torch.from_numpy(mask[:, 0].astype(bool)) == inl[b]).float().mean()
        assert float(agree) > 0.97


def test_ransac_homography_seed_determinism_and_weights():
    g = torch.Generator().manual_seed(9)
    x1, x2, _, _ = plane_scene(2, 200, g, torch.float32)
    xn, _ = add_outliers(x2, 0.3, g)
    w = torch.ones(2, 200)
    w[:, :10] = 0.0
    a = ransac_homography(x1, xn, w, generator=torch.Generator().manual_seed(42))
    b = ransac_homography(x1, xn, w, generator=torch.Generator().manual_seed(42))
    assert torch.equal(a.model, b.model) and torch.equal(a.inliers, b.inliers)
    assert torch.equal(a.score, b.score)
    assert not bool(a.inliers[:, :10].any())                   # weight 0: never an inlier
    assert bool((a.num_inliers == a.inliers.sum(-1)).all())


# ---------------------------------------------------------------------------------------------
# rotation model
# ---------------------------------------------------------------------------------------------

def test_rotation_from_bearings_exact():
    g = torch.Generator().manual_seed(10)
    x1, x2, R, K = rotation_scene(4, 30, g)
    R_est = rotation_from_bearings(unproject(x1, K), unproject(x2, K))
    assert torch.allclose(R_est, R, atol=1e-12)
    # two rays suffice; scaled rays are fine
    R_two = rotation_from_bearings(3.0 * unproject(x1[:, :2], K), unproject(x2[:, :2], K))
    assert torch.allclose(R_two, R, atol=1e-12)


def test_rotation_from_bearings_is_proper_under_noise():
    g = torch.Generator().manual_seed(11)
    b1 = torch.randn(5, 8, 3, generator=g, dtype=torch.float64)
    b2 = torch.randn(5, 8, 3, generator=g, dtype=torch.float64)   # unrelated: worst case
    R = rotation_from_bearings(b1, b2)
    eye = torch.eye(3, dtype=torch.float64).expand(5, 3, 3)
    assert torch.allclose(R.transpose(1, 2) @ R, eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(5, dtype=torch.float64))


def test_rotation_from_bearings_gradcheck_float64():
    g = torch.Generator().manual_seed(12)
    x1, x2, _, K = rotation_scene(2, 5, g)
    b1 = unproject(x1, K)
    b2 = unproject(x2, K) + 0.01 * torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    w = torch.rand(2, 5, generator=g, dtype=torch.float64) + 0.5
    args = tuple(t.clone().requires_grad_(True) for t in (b1, b2, w))
    assert torch.autograd.gradcheck(rotation_from_bearings, args, eps=1e-6, atol=1e-6)


def test_ransac_rotation_exact_noise_free():
    g = torch.Generator().manual_seed(13)
    x1, x2, R, K = rotation_scene(3, 100, g)
    fit = ransac_rotation(x1, x2, K, K, generator=g)
    assert float(rotation_error_deg(fit.model, R).max()) < 1e-6
    assert bool(fit.inliers.all())
    H = rotation_homography(fit.model, K, K)
    assert float(transfer_error(H, x1, x2).max()) < 1e-6


def test_ransac_rotation_outliers_noise_and_two_cameras():
    g = torch.Generator().manual_seed(14)
    x1, x2, R, K = rotation_scene(2, 500, g)
    K2 = K.clone()
    K2[:, 0, 0], K2[:, 1, 1], K2[:, 0, 2] = 700.0, 705.0, 600.0   # a different second camera
    x2, _ = project(unproject(x1, K) @ R.transpose(1, 2), K2)
    xn = x2 + 0.5 * torch.randn(x2.shape, generator=g, dtype=x2.dtype)
    xn, out = add_outliers(xn, 0.4, g)
    fit = ransac_rotation(x1.float(), xn.float(), K.float(), K2.float(), threshold_px=2.0,
                          generator=torch.Generator().manual_seed(0))
    assert float(rotation_error_deg(fit.model.double(), R).max()) < 0.02
    recall = (fit.inliers & ~out).sum(-1) / (~out).sum(-1)
    assert bool((recall > 0.97).all())
    assert int((fit.inliers & out).sum()) <= 2                  # junk within 2 px by chance
    again = ransac_rotation(x1.float(), xn.float(), K.float(), K2.float(), threshold_px=2.0,
                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(fit.model, again.model) and torch.equal(fit.inliers, again.inliers)
