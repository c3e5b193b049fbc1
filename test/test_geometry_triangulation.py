"""Tests of geometry.triangulation: mid-point triangulation, parallax and cheirality masks."""

import math

import cv2
import numpy as np
import pytest
import torch

from trianflow_ros.geometry.camera import project
from trianflow_ros.geometry.se3 import make_pose, so3_exp
from trianflow_ros.geometry.triangulation import (
    midpoint_triangulate, min_angle_for_parallax, positive_depth_mask, ray_angle_mask, reproject)

FX, CX, CY, WIDTH, HEIGHT = 718.9, 607.2, 185.2, 1241, 376


def _K(b, dtype=torch.float64):
    K = torch.tensor([[FX, 0.0, CX], [0.0, FX, CY], [0.0, 0.0, 1.0]], dtype=dtype)
    return K.expand(b, 3, 3).clone()


def _scene(b, n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    R = so3_exp((torch.rand(b, 3, generator=g, dtype=dtype) - 0.5) * 0.2)
    t = torch.randn(b, 3, generator=g, dtype=dtype) * 0.4
    t[:, 2] += 1.0
    u = torch.rand(b, n, generator=g, dtype=dtype) * (WIDTH - 1)
    v = torch.rand(b, n, generator=g, dtype=dtype) * (HEIGHT - 1)
    d = 4.0 + torch.rand(b, n, generator=g, dtype=dtype) * 40.0
    X1 = torch.stack(((u - CX) / FX * d, (v - CY) / FX * d, d), dim=-1)
    K = _K(b, dtype)
    T = make_pose(R, t)
    x1, _ = project(X1, K)
    x2, _ = project(X1 @ R.transpose(1, 2) + t[:, None], K)
    return x1, x2, K, T, X1


def test_midpoint_exact_on_noise_free_scene_batched():
    x1, x2, K, T, X1 = _scene(4, 200, seed=1)
    X = midpoint_triangulate(x1, x2, K, K, T)
    assert X.shape == (4, 200, 3)
    assert torch.allclose(X, X1, rtol=1e-8, atol=1e-8)
    for i in range(4):                                   # batch element == its B = 1 result
        Xi = midpoint_triangulate(x1[i:i + 1], x2[i:i + 1], K[i:i + 1], K[i:i + 1],
                                  T[i:i + 1])
        assert torch.allclose(Xi, X[i:i + 1], atol=1e-12)


def test_midpoint_is_the_middle_of_the_common_perpendicular():
    # skew rays: ray 1 is the optical axis of camera 1 (the z axis); camera 2 sits at
    # c2 = (2, 0.2, 0) (same orientation) and looks at P = (0, 0.2, 10) along (-2, 0, 10). Both
    # directions are orthogonal to y, so the common perpendicular joins (0, 0, 10) and P.
    K = _K(1)
    T = make_pose(torch.eye(3, dtype=torch.float64)[None],
                  torch.tensor([[-2.0, -0.2, 0.0]], dtype=torch.float64))
    x1 = torch.tensor([[[CX, CY]]], dtype=torch.float64)
    x2 = torch.tensor([[[CX - FX * 0.2, CY]]], dtype=torch.float64)
    X = midpoint_triangulate(x1, x2, K, K, T)
    assert torch.allclose(X, torch.tensor([[[0.0, 0.1, 10.0]]], dtype=torch.float64),
                          atol=1e-9)


def test_midpoint_matches_opencv_triangulate_points():
    x1, x2, K, T, X1 = _scene(1, 100, seed=2)
    P1 = K[0].numpy() @ np.hstack((np.eye(3), np.zeros((3, 1))))
    P2 = K[0].numpy() @ T[0, :3].numpy()
    Xh = cv2.triangulatePoints(P1, P2, x1[0].numpy().T, x2[0].numpy().T)
    X_cv = torch.from_numpy((Xh[:3] / Xh[3]).T)[None]
    X = midpoint_triangulate(x1, x2, K, K, T)
    assert torch.allclose(X, X_cv, rtol=1e-6, atol=1e-6)


def test_midpoint_gradcheck():
    x1, x2, K, T, _ = _scene(2, 5, seed=3)
    g = torch.Generator().manual_seed(0)
    x1 = (x1 + torch.randn(x1.shape, generator=g, dtype=x1.dtype)).requires_grad_(True)
    x2 = x2.clone().requires_grad_(True)
    T = T.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b, p: midpoint_triangulate(a, b, K, K, p),
                                    (x1, x2, T))


def test_midpoint_parallel_rays_stay_finite():
    K = _K(1)
    T = make_pose(torch.eye(3, dtype=torch.float64)[None],
                  torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64))
    x = torch.tensor([[[CX, CY]]], dtype=torch.float64)  # the epipole: rays coincide
    assert bool(torch.isfinite(midpoint_triangulate(x, x, K, K, T)).all())


def test_ray_angle_mask_threshold():
    K = _K(1)
    T = make_pose(torch.eye(3, dtype=torch.float64)[None],
                  torch.tensor([[-1.0, 0.0, 0.0]], dtype=torch.float64))   # 1 m baseline
    depth = torch.tensor([10.0, 100.0, 1000.0], dtype=torch.float64)
    X1 = torch.stack((torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                      depth), dim=-1)[None]
    x1, _, x2, _ = reproject(X1, T, K, K)
    # parallax angles: atan(1 / depth) = 5.7, 0.57, 0.057 degrees
    assert ray_angle_mask(x1, x2, K, K, T, min_angle_deg=0.25).tolist() == [[True, True, False]]
    assert ray_angle_mask(x1, x2, K, K, T, min_angle_deg=1.0).tolist() == [[True, False, False]]
    # pure rotation: no parallax anywhere
    R = make_pose(so3_exp(torch.tensor([[0.0, 0.05, 0.0]], dtype=torch.float64)),
                  torch.zeros(1, 3, dtype=torch.float64))
    x1, x2, K5, _, X1 = _scene(1, 50, seed=4)
    x2r, _ = project(X1 @ R[:, :3, :3].transpose(1, 2), K5)
    assert not bool(ray_angle_mask(x1, x2r, K5, K5, R).any())
    with pytest.raises(ValueError, match='T_21'):
        ray_angle_mask(x1, x2, K5, K5, torch.eye(4)[None, :3])


def test_ray_angle_mask_per_pair_threshold():
    """A (B, 1) tensor threshold applies one angle per pair, as a number does for all."""
    K = _K(2)
    T = make_pose(torch.eye(3, dtype=torch.float64)[None].expand(2, 3, 3),
                  torch.tensor([[-1.0, 0.0, 0.0]], dtype=torch.float64).expand(2, 3))
    depth = torch.tensor([10.0, 100.0, 1000.0], dtype=torch.float64)
    X1 = torch.stack((torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                      depth), dim=-1)[None].expand(2, 3, 3)
    x1, _, x2, _ = reproject(X1, T, K, K)
    threshold = torch.tensor([[0.25], [1.0]], dtype=torch.float64)
    assert ray_angle_mask(x1, x2, K, K, T, threshold).tolist() == [[True, True, False],
                                                                   [True, False, False]]


def test_min_angle_for_parallax():
    """A parallax of p pixels at focal f is p / f rad; the floor holds; shape (B, 1)."""
    K = _K(2)
    K[1, :2] *= 0.1                                              # a 10x smaller image
    angle = min_angle_for_parallax(1.0, K)
    assert angle.shape == (2, 1)
    assert angle[0, 0].item() == pytest.approx(math.degrees(1.0 / FX), rel=1e-12)
    assert angle[1, 0].item() == pytest.approx(math.degrees(10.0 / FX), rel=1e-12)
    floored = min_angle_for_parallax(1.0, K, min_angle_deg=0.5)
    assert floored[:, 0].tolist() == [0.5, pytest.approx(math.degrees(10.0 / FX))]
    assert min_angle_for_parallax(0.0, K, 0.05)[:, 0].tolist() == [0.05, 0.05]
    # a point moving by more than the parallax passes, by less fails (1 m baseline, focal FX)
    T = make_pose(torch.eye(3, dtype=torch.float64)[None],
                  torch.tensor([[-1.0, 0.0, 0.0]], dtype=torch.float64))
    z = torch.tensor([FX / 2.0, FX / 0.5], dtype=torch.float64)   # parallax 2 px and 0.5 px
    X1 = torch.stack((torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                      z), dim=-1)[None]
    x1, _, x2, _ = reproject(X1, T, K[:1], K[:1])
    assert (x2 - x1).norm(dim=-1)[0].tolist() == [pytest.approx(2.0), pytest.approx(0.5)]
    assert ray_angle_mask(x1, x2, K[:1], K[:1], T,
                          min_angle_for_parallax(1.0, K[:1])).tolist() == [[True, False]]


def test_positive_depth_mask_and_reproject():
    x1, x2, K, T, X1 = _scene(3, 100, seed=5)
    assert bool(positive_depth_mask(X1, T).all())
    assert not bool(positive_depth_mask(-X1, T).any())
    Y = X1.clone()
    Y[:, :10, 2] = 0.005                                  # too close to camera 1
    mask = positive_depth_mask(Y, T, min_depth=0.01)
    assert mask.shape == (3, 100) and not bool(mask[:, :10].any())
    r1, z1, r2, z2 = reproject(X1, T, K, K)
    assert r1.shape == (3, 100, 2) and z1.shape == (3, 100)
    assert torch.allclose(r1, x1, atol=1e-9) and torch.allclose(r2, x2, atol=1e-9)
    assert torch.allclose(z1, X1[..., 2])
    assert torch.autograd.gradcheck(lambda X: reproject(X, T[:1], K[:1], K[:1]),
                                    (X1[:1, :4].clone().requires_grad_(True),))
    assert math.isfinite(float(z2.sum()))


def test_ray_angle_exact_shapes_and_gradcheck():
    from trianflow_ros.geometry.triangulation import ray_angle
    x1, x2, K, T, X1 = _scene(3, 50, seed=4)
    angle = ray_angle(x1, x2, K, K, T)
    assert angle.shape == (3, 50) and angle.dtype == torch.float64
    c2 = -(T[:, :3, :3].transpose(1, 2) @ T[:, :3, 3:]).squeeze(-1)      # camera 2 centre
    a, b = X1, X1 - c2[:, None]
    ref = torch.acos((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)))
    assert torch.allclose(angle, ref, atol=1e-9)
    # consistent with the mask
    assert torch.equal(ray_angle_mask(x1, x2, K, K, T, 1.0), angle >= math.radians(1.0))
    xs = x1[:1, :4].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ray_angle(x, x2[:1, :4], K[:1], K[:1], T[:1]),
                                    (xs,))
