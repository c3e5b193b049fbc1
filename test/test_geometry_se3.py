"""Tests of geometry.se3: poses, so(3)/se(3) exp and log, errors."""

import math

import cv2
import numpy as np
import pytest
import torch

from trianflow_ros.geometry.se3 import (
    direction_error_deg, invert_pose, make_pose, rotation_angle, rotation_error_deg, se3_exp,
    se3_log, skew, so3_exp, so3_log, split_pose, transform_points)


def _axis_angle(angles, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    axis = torch.randn(len(angles), 3, generator=g, dtype=dtype)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    return axis * torch.tensor(angles, dtype=dtype)[:, None]


def _random_poses(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    xi = torch.randn(b, 6, generator=g, dtype=torch.float64)
    return se3_exp(xi)


def _twist_matrix(xi):
    M = torch.zeros(xi.shape[0], 4, 4, dtype=xi.dtype)
    M[:, :3, :3] = skew(xi[:, 3:])
    M[:, :3, 3] = xi[:, :3]
    return M


def test_make_split_round_trip_and_shapes():
    R = so3_exp(_axis_angle([0.3, 1.0]))
    t = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 0.5]], dtype=torch.float64)
    T = make_pose(R, t)
    assert T.shape == (2, 4, 4)
    assert torch.equal(T[:, 3], torch.tensor([[0, 0, 0, 1.0]] * 2, dtype=torch.float64))
    R2, t2 = split_pose(T)
    assert torch.equal(R2, R) and torch.equal(t2, t)
    with pytest.raises(ValueError, match='t'):
        make_pose(R, t[:, :2])


def test_invert_pose_and_transform_points():
    T = _random_poses(4)
    Ti = invert_pose(T)
    assert torch.allclose(Ti, torch.linalg.inv(T), atol=1e-12)
    assert torch.allclose(T @ Ti, torch.eye(4, dtype=torch.float64).expand(4, 4, 4), atol=1e-12)
    X = torch.randn(4, 9, 3, dtype=torch.float64)
    Y = transform_points(T, X)
    ref = (torch.cat((X, torch.ones_like(X[..., :1])), -1) @ T.transpose(1, 2))[..., :3]
    assert torch.allclose(Y, ref, atol=1e-12)
    assert torch.allclose(transform_points(Ti, Y), X, atol=1e-12)


def test_skew_is_cross_product():
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose((skew(a) @ b[..., None])[..., 0], torch.cross(a, b, dim=-1))


ANGLES = [0.0, 1e-9, 1e-6, 1e-3, 0.05, 0.0999, 0.1001, 0.5, 1.0, 2.0, 3.0,
          math.pi - 0.1, math.pi - 1e-3, math.pi - 1e-6]


def test_so3_exp_matches_cv2_rodrigues():
    phi = _axis_angle(ANGLES)
    R = so3_exp(phi)
    for i in range(len(ANGLES)):
        ref, _ = cv2.Rodrigues(phi[i].numpy())
        assert np.allclose(R[i].numpy(), ref, atol=1e-12), ANGLES[i]
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(R.transpose(1, 2) @ R, eye.expand_as(R), atol=1e-12)


def test_so3_log_matches_cv2_and_round_trips():
    phi = _axis_angle(ANGLES, seed=1)
    R = so3_exp(phi)
    out = so3_log(R)
    assert torch.allclose(out, phi, atol=1e-9)
    for i in range(len(ANGLES)):
        ref, _ = cv2.Rodrigues(R[i].numpy())
        assert np.allclose(out[i].numpy(), ref[:, 0], atol=1e-6), ANGLES[i]


def test_so3_log_near_pi_float32():
    # the axis must come from the symmetric part: at 170-180 deg the skew part is not negligible
    angles = [math.pi - 0.14, math.pi - 0.05, math.pi - 1e-3]
    phi64 = _axis_angle(angles, seed=2)
    R = so3_exp(phi64).float()
    err = (so3_log(R).double() - phi64).norm(dim=-1)
    assert err.max() < 1e-5


def test_so3_log_exactly_pi_either_sign():
    phi = _axis_angle([math.pi], seed=3)
    out = so3_log(so3_exp(phi))
    assert torch.allclose(out, phi, atol=1e-7) or torch.allclose(out, -phi, atol=1e-7)
    assert abs(rotation_angle(so3_exp(phi)).item() - math.pi) < 1e-7


def test_se3_exp_matches_matrix_exponential():
    g = torch.Generator().manual_seed(4)
    xi = torch.randn(6, 6, generator=g, dtype=torch.float64)
    xi[0, 3:] = 0.0                                  # pure translation
    xi[1, 3:] *= 1e-7                                # tiny rotation
    xi[2, 3:] *= 0.02
    ref = torch.linalg.matrix_exp(_twist_matrix(xi))
    assert torch.allclose(se3_exp(xi), ref, atol=1e-12)
    assert torch.allclose(se3_exp(xi)[0, :3, 3], xi[0, :3])


def test_se3_exp_hand_value():
    xi = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, math.pi / 2]], dtype=torch.float64)
    R, t = split_pose(se3_exp(xi))
    ref = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(R[0], ref, atol=1e-15) and torch.all(t == 0)


def test_se3_log_round_trip():
    g = torch.Generator().manual_seed(5)
    xi = torch.randn(8, 6, generator=g, dtype=torch.float64)
    xi[:, 3:] = _axis_angle([0.0, 1e-8, 1e-4, 0.05, 0.5, 2.0, 3.0, math.pi - 1e-4], seed=6)
    assert torch.allclose(se3_log(se3_exp(xi)), xi, atol=1e-8)


def test_small_angle_float32_accuracy():
    xi = torch.tensor([[1.0, -2.0, 0.5, 3e-3, -2e-3, 1e-3]], dtype=torch.float64)
    ref = se3_exp(xi)
    assert (se3_exp(xi.float()).double() - ref).abs().max() < 1e-6
    T = _random_poses(3, seed=7).float()
    assert (se3_exp(se3_log(T)) - T).abs().max() < 1e-5


def test_errors_hand_values():
    R1 = so3_exp(torch.tensor([[0.0, 0.0, 0.1]], dtype=torch.float64))
    R2 = so3_exp(torch.tensor([[0.0, 0.0, 0.4]], dtype=torch.float64))
    assert abs(rotation_error_deg(R1, R2).item() - math.degrees(0.3)) < 1e-9
    t1 = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    t2 = torch.tensor([[2.0, 2.0, 0.0]], dtype=torch.float64)
    assert abs(direction_error_deg(t1, t2).item() - 45.0) < 1e-9
    assert direction_error_deg(t1, 5 * t1).item() < 1e-5


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(8)
    phi = (0.7 * torch.randn(3, 3, generator=g, dtype=torch.float64)).requires_grad_()
    xi = torch.randn(3, 6, generator=g, dtype=torch.float64).requires_grad_()
    T = _random_poses(3, seed=9).requires_grad_()
    X = torch.randn(3, 5, 3, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(so3_exp, (phi,))
    assert torch.autograd.gradcheck(se3_exp, (xi,))
    assert torch.autograd.gradcheck(transform_points, (T, X))
    # also through the Taylor branch
    small = (1e-3 * torch.randn(2, 3, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(so3_exp, (small,))
    R = so3_exp(_axis_angle([0.3, 1.5], seed=10)).requires_grad_()
    assert torch.autograd.gradcheck(so3_log, (R,))
