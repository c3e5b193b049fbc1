"""
Two-view triangulation: the mid-point method of TrianFlow (paper Eq. 2), parallax and cheirality.

``T_21`` maps frame-1 points into frame 2 (X_2 = R X_1 + t). Camera 1 sits at the origin of
frame 1 and camera 2 at c2 = -R^T t. References are to Hartley & Zisserman, 2nd ed. (H&Z).
"""

import math
from typing import Tuple, Union

import torch

from trianflow_ros.geometry.camera import project, unproject
from trianflow_ros.geometry.checks import check_shape
from trianflow_ros.geometry.se3 import split_pose, transform_points


def _rays(x1: torch.Tensor, x2: torch.Tensor, K1: torch.Tensor, K2: torch.Tensor,
          T_21: torch.Tensor):
    """Check shapes; return ray directions d1, d2 (B, N, 3) in frame 1 and the centre c2 (B, 3)."""
    check_shape(x1, 'x1', ('B', 'N', 2))
    check_shape(x2, 'x2', x1.shape)
    check_shape(K1, 'K1', (x1.shape[0], 3, 3))
    check_shape(K2, 'K2', K1.shape)
    check_shape(T_21, 'T_21', (x1.shape[0], 4, 4))
    R, t = split_pose(T_21)
    d1 = unproject(x1, K1)                                                # (B, N, 3), frame 1
    d2 = unproject(x2, K2) @ R                                            # R^T d, frame 1
    c2 = -(R.transpose(1, 2) @ t.unsqueeze(-1)).squeeze(-1)               # (B, 3)
    return d1, d2, c2


def midpoint_triangulate(x1: torch.Tensor, x2: torch.Tensor, K1: torch.Tensor,
                         K2: torch.Tensor, T_21: torch.Tensor, eps: float = 1e-12
                         ) -> torch.Tensor:
    """
    Mid-point triangulation (TrianFlow Eq. 2; H&Z Sec. 12.1: middle of the common perpendicular).

    The rays c1 + a d1 (c1 = 0) and c2 + b d2 are closest at the parameters that make the
    connecting segment perpendicular to both rays, from the 2x2 normal equations
    [d1.d1, -d1.d2; d1.d2, -d2.d2] [a; b] = [d1.c2; d2.c2]; the result is the segment's mid-point.
    Nearly parallel rays (no parallax) give far, unreliable points: mask them with
    :func:`ray_angle_mask`; exactly parallel rays are kept finite by ``eps``.

    :param x1: pixel coordinates in image 1, shape (B, N, 2).
    :param x2: pixel coordinates in image 2, shape (B, N, 2).
    :param K1: intrinsics of camera 1, shape (B, 3, 3).
    :param K2: intrinsics of camera 2, shape (B, 3, 3).
    :param T_21: relative pose mapping frame-1 points into frame 2, shape (B, 4, 4).
    :param eps: floor of the normal-equation determinant.
    :return: points X1 in frame 1, shape (B, N, 3). Differentiable.
    """
    d1, d2, c2 = _rays(x1, x2, K1, K2, T_21)
    X = midpoint_channels_first(d1.transpose(1, 2), d2.transpose(1, 2), c2.unsqueeze(-1), eps)
    return X.transpose(1, 2)


def midpoint_channels_first(d1: torch.Tensor, d2: torch.Tensor, c2: torch.Tensor,
                            eps: float = 1e-12) -> torch.Tensor:
    """
    Mid-point of the common perpendicular of the rays a d1 and c2 + b d2 (see above).

    Channels-first for speed (the per-point dot products run over contiguous rows); any
    leading dimensions broadcast.

    :param d1: ray directions from the origin, shape (..., 3, N).
    :param d2: ray directions from c2, same frame, shape (..., 3, N).
    :param c2: origin of the second rays, shape (..., 3, 1).
    :param eps: floor of the normal-equation determinant.
    :return: mid-points, shape (..., 3, N). Differentiable.
    """
    a11 = (d1 * d1).sum(-2)
    a12 = (d1 * d2).sum(-2)
    a22 = (d2 * d2).sum(-2)
    b1 = (d1 * c2).sum(-2)
    b2 = (d2 * c2).sum(-2)
    det = (a11 * a22 - a12 * a12).clamp(min=eps)                          # 0 iff parallel
    a = (a22 * b1 - a12 * b2) / det                                       # along ray 1
    b = (a12 * b1 - a11 * b2) / det                                       # along ray 2
    return 0.5 * (a.unsqueeze(-2) * d1 + c2 + b.unsqueeze(-2) * d2)


def ray_angle(x1: torch.Tensor, x2: torch.Tensor, K1: torch.Tensor, K2: torch.Tensor,
              T_21: torch.Tensor) -> torch.Tensor:
    """
    Return the angle (rad) between the two viewing rays of every correspondence (the parallax).

    :param x1: pixel coordinates in image 1, shape (B, N, 2).
    :param x2: pixel coordinates in image 2, shape (B, N, 2).
    :param K1: intrinsics of camera 1, shape (B, 3, 3).
    :param K2: intrinsics of camera 2, shape (B, 3, 3).
    :param T_21: relative pose mapping frame-1 points into frame 2, shape (B, 4, 4).
    :return: angles in [0, pi], shape (B, N). Differentiable (atan2 of |cross| and dot).
    """
    d1, d2, _ = _rays(x1, x2, K1, K2, T_21)
    return torch.atan2(torch.linalg.cross(d1, d2).norm(dim=-1), (d1 * d2).sum(-1))


def ray_angle_mask(x1: torch.Tensor, x2: torch.Tensor, K1: torch.Tensor, K2: torch.Tensor,
                   T_21: torch.Tensor, min_angle_deg: Union[float, torch.Tensor] = 0.25
                   ) -> torch.Tensor:
    """
    Keep correspondences whose viewing rays meet at a parallax angle of at least ``min_angle_deg``.

    The relative depth error of a triangulated point grows like sigma / angle (sigma = angular
    noise of the rays, about noise_px / focal_px), so points near the epipole or far away are
    unreliable. With a KITTI-like focal of ~720 px and 0.3 px flow noise (0.024 deg), the default
    0.25 deg bounds the relative depth error to roughly 10 %. A pure rotation rejects every
    point. (The original TrianFlow test cos > 0.001 only rejected points within ~12 px of the
    epipole.) :func:`min_angle_for_parallax` turns a parallax in pixels into this angle.

    :param x1: pixel coordinates in image 1, shape (B, N, 2).
    :param x2: pixel coordinates in image 2, shape (B, N, 2).
    :param K1: intrinsics of camera 1, shape (B, 3, 3).
    :param K2: intrinsics of camera 2, shape (B, 3, 3).
    :param T_21: relative pose mapping frame-1 points into frame 2, shape (B, 4, 4).
    :param min_angle_deg: the smallest accepted angle between the two rays, in degrees: a
        number, or a tensor broadcastable to (B, N) (e.g. one angle per pair, shape (B, 1)).
    :return: mask, shape (B, N), bool. Not differentiable.
    """
    d1, d2, _ = _rays(x1, x2, K1, K2, T_21)
    cos = (d1 * d2).sum(-1) / (d1.norm(dim=-1) * d2.norm(dim=-1)).clamp(min=1e-30)
    if isinstance(min_angle_deg, torch.Tensor):
        return cos <= torch.cos(torch.deg2rad(min_angle_deg.to(cos.dtype)))
    return cos <= math.cos(math.radians(min_angle_deg))


def min_angle_for_parallax(parallax_px: float, K: torch.Tensor,
                           min_angle_deg: float = 0.0) -> torch.Tensor:
    """
    Ray angle (deg) that moves a point by ``parallax_px`` pixels, per camera.

    The result is at least ``min_angle_deg``. A parallax of p pixels at focal f (mean of fx,
    fy) is an angle of about p / f rad, so a threshold in pixels keeps the same depth accuracy
    at every image resolution (0.05 deg is 0.4 px at KITTI's 832-px width but 0.06 px at
    128 px). Points with less parallax than the flow noise get triangulated depths that are
    noise, and the training's triangulation loss then cannot tell a good depth map from a
    constant one.

    :param parallax_px: smallest parallax in pixels (0: only ``min_angle_deg``).
    :param K: intrinsics, shape (B, 3, 3).
    :param min_angle_deg: floor of the result, degrees.
    :return: angles in degrees, shape (B, 1), for :func:`ray_angle_mask`.
    """
    check_shape(K, 'K', ('B', 3, 3))
    focal = 0.5 * (K[:, 0, 0].abs() + K[:, 1, 1].abs())
    angle = torch.rad2deg(parallax_px / focal.clamp(min=1e-12))
    return angle.clamp(min=min_angle_deg)[:, None]


def positive_depth_mask(X1: torch.Tensor, T_21: torch.Tensor, min_depth: float = 0.01
                        ) -> torch.Tensor:
    """
    Cheirality: points in front of both cameras (H&Z Sec. 9.6.3, Result 9.19).

    :param X1: points in frame 1, shape (B, N, 3).
    :param T_21: relative pose mapping frame-1 points into frame 2, shape (B, 4, 4).
    :param min_depth: the smallest accepted depth z in both cameras.
    :return: mask z1 > min_depth and z2 > min_depth, shape (B, N), bool. Not differentiable.
    """
    check_shape(X1, 'X1', ('B', None, 3))
    check_shape(T_21, 'T_21', (X1.shape[0], 4, 4))
    z2 = transform_points(T_21, X1)[..., 2]
    return (X1[..., 2] > min_depth) & (z2 > min_depth)


def reproject(X1: torch.Tensor, T_21: torch.Tensor, K1: torch.Tensor, K2: torch.Tensor
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Project frame-1 points into both images (H&Z eq. 6.8, x = K [R | t] X).

    :param X1: points in frame 1, shape (B, N, 3).
    :param T_21: relative pose mapping frame-1 points into frame 2, shape (B, 4, 4).
    :param K1: intrinsics of camera 1, shape (B, 3, 3).
    :param K2: intrinsics of camera 2, shape (B, 3, 3).
    :return: pixels x1 (B, N, 2), depths z1 (B, N), pixels x2 (B, N, 2), depths z2 (B, N).
        Pixels of points with depth <= 1e-6 are clamped (see :func:`project`); mask them with
        the depths. Differentiable.
    """
    check_shape(X1, 'X1', ('B', None, 3))
    check_shape(T_21, 'T_21', (X1.shape[0], 4, 4))
    check_shape(K1, 'K1', (X1.shape[0], 3, 3))
    check_shape(K2, 'K2', K1.shape)
    x1, z1 = project(X1, K1)
    x2, z2 = project(transform_points(T_21, X1), K2)
    return x1, z1, x2, z2
