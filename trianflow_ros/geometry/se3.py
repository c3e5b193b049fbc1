"""
Rigid-body transforms: SE(3) matrices, the so(3)/se(3) exponential and logarithm, errors.

``T_ab`` maps points in frame b into frame a: ``X_a = R_ab X_b + t_ab``. Poses are (B, 4, 4),
rotations (B, 3, 3), translations (B, 3). A tangent vector ``xi = (rho, phi)`` puts the
translational part first. Differentiable unless stated otherwise.

The representation changes shared with the numpy layers (``skew`` = ``hat``, the rigid inverse
``invert_pose`` = ``se3_inverse``, quaternions, roll-pitch-yaw) are in
:mod:`trianflow_ros.geometry.lie`; this module adds the exponential and logarithm maps and the
pose errors, torch only.
"""

from typing import Tuple

import torch

from trianflow_ros.geometry.checks import check_shape
# hat ([v]_x) and the rigid inverse live in the Lie module (numpy and torch); re-exported here
from trianflow_ros.geometry.lie import se3_inverse as invert_pose  # noqa: F401
from trianflow_ros.geometry.lie import skew


def make_pose(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """
    Build 4x4 poses from rotations (B, 3, 3) and translations (B, 3).

    :return: (B, 4, 4).
    """
    check_shape(R, 'R', ('B', 3, 3))
    check_shape(t, 't', ('B', 3))
    bottom = R.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(R.shape[0], 1, 4)
    return torch.cat((torch.cat((R, t.unsqueeze(-1)), dim=-1), bottom), dim=1)


def split_pose(T: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split poses (B, 4, 4) into R (B, 3, 3) and t (B, 3)."""
    check_shape(T, 'T', ('B', 4, 4))
    return T[:, :3, :3], T[:, :3, 3]


def transform_points(T: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """
    Apply poses to point sets.

    :param T: (B, 4, 4) = T_ab.
    :param X: points in frame b, shape (B, N, 3).
    :return: points in frame a, shape (B, N, 3).
    """
    R, t = split_pose(T)
    check_shape(X, 'X', (T.shape[0], None, 3))
    return X @ R.transpose(1, 2) + t.unsqueeze(1)


def _sinc_terms(theta2: torch.Tensor):
    """
    Return A = sin(t)/t, B = (1-cos t)/t^2, C = (t - sin t)/t^3 as functions of t^2.

    Below t = 0.1 rad the closed forms lose digits to cancellation (in float32, 1 - cos t and
    t - sin t are mostly rounding error for t < 1e-2), so a Taylor series to t^6 is used there;
    its truncation error is below 1e-12.
    """
    small = theta2 < 1e-2
    t2 = torch.where(small, torch.ones_like(theta2), theta2)
    t = t2.sqrt()
    x = theta2
    a = torch.where(small, 1.0 - x / 6.0 * (1.0 - x / 20.0 * (1.0 - x / 42.0)),
                    torch.sin(t) / t)
    b = torch.where(small, 0.5 - x / 24.0 * (1.0 - x / 30.0 * (1.0 - x / 56.0)),
                    (1.0 - torch.cos(t)) / t2)
    c = torch.where(small, 1.0 / 6.0 - x / 120.0 * (1.0 - x / 42.0 * (1.0 - x / 72.0)),
                    (t - torch.sin(t)) / (t2 * t))
    return a, b, c


def so3_exp(phi: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: axis-angle vectors (B, 3) -> rotations (B, 3, 3)."""
    check_shape(phi, 'phi', ('B', 3))
    a, b, _ = _sinc_terms((phi * phi).sum(-1))
    W = skew(phi)
    eye = torch.eye(3, dtype=phi.dtype, device=phi.device).expand_as(W)
    return eye + a[:, None, None] * W + b[:, None, None] * (W @ W)


def so3_log(R: torch.Tensor) -> torch.Tensor:
    """
    Rotations (B, 3, 3) -> axis-angle vectors (B, 3), angle in [0, pi].

    Stable near 0 and near pi (the axis comes from the symmetric part there).
    """
    check_shape(R, 'R', ('B', 3, 3))
    cos = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    vee = torch.stack((R[:, 2, 1] - R[:, 1, 2], R[:, 0, 2] - R[:, 2, 0],
                       R[:, 1, 0] - R[:, 0, 1]), dim=-1)                      # 2 sin(t) axis
    sin = 0.5 * vee.norm(dim=-1)
    theta = torch.atan2(sin, cos)
    # generic and small angles: phi = theta / (2 sin theta) * vee
    small = sin < 1e-7
    factor = torch.where(small, 0.5 + theta ** 2 / 12.0,
                         theta / (2.0 * torch.where(small, torch.ones_like(sin), sin)))
    phi = factor.unsqueeze(-1) * vee
    # near pi vee is tiny: the symmetric part (R + R^T) / 2 = cos I + (1 - cos) a a^T gives
    # a a^T exactly; its largest column is a * a_j, normalised -> +-a, sign from vee.
    near_pi = cos < -0.99
    if bool(near_pi.any()):
        eye = torch.eye(3, dtype=R.dtype, device=R.device)
        S = 0.5 * (R + R.transpose(1, 2)) - cos[:, None, None] * eye
        col = S.diagonal(dim1=-2, dim2=-1).argmax(-1)
        axis = S[torch.arange(R.shape[0], device=R.device), :, col]
        axis = axis / axis.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        sign = torch.where((axis * vee).sum(-1) < 0, -1.0, 1.0).to(R.dtype)
        phi = torch.where(near_pi.unsqueeze(-1), axis * (sign * theta).unsqueeze(-1), phi)
    return phi


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """Tangent vectors xi = (rho, phi), shape (B, 6) -> poses (B, 4, 4)."""
    check_shape(xi, 'xi', ('B', 6))
    rho, phi = xi[:, :3], xi[:, 3:]
    _, b, c = _sinc_terms((phi * phi).sum(-1))
    W = skew(phi)
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device).expand_as(W)
    V = eye + b[:, None, None] * W + c[:, None, None] * (W @ W)
    return make_pose(so3_exp(phi), (V @ rho.unsqueeze(-1)).squeeze(-1))


def se3_log(T: torch.Tensor) -> torch.Tensor:
    """Poses (B, 4, 4) -> tangent vectors (B, 6) = (rho, phi)."""
    R, t = split_pose(T)
    phi = so3_log(R)
    _, b, c = _sinc_terms((phi * phi).sum(-1))
    W = skew(phi)
    eye = torch.eye(3, dtype=T.dtype, device=T.device).expand_as(W)
    V = eye + b[:, None, None] * W + c[:, None, None] * (W @ W)
    rho = torch.linalg.solve(V, t.unsqueeze(-1)).squeeze(-1)
    return torch.cat((rho, phi), dim=-1)


def rotation_angle(R: torch.Tensor) -> torch.Tensor:
    """Rotation angle in radians, shape (B,), of rotations (B, 3, 3)."""
    return so3_log(R).norm(dim=-1)


def rotation_error_deg(R_est: torch.Tensor, R_gt: torch.Tensor) -> torch.Tensor:
    """Angle of R_est^T R_gt in degrees, shape (B,). Not meant for gradients."""
    return torch.rad2deg(rotation_angle(R_est.transpose(1, 2) @ R_gt))


def direction_error_deg(t_est: torch.Tensor, t_gt: torch.Tensor, eps: float = 1e-12
                        ) -> torch.Tensor:
    """Angle between translation directions (B, 3) in degrees, shape (B,)."""
    check_shape(t_est, 't_est', ('B', 3))
    check_shape(t_gt, 't_gt', ('B', 3))
    cos = (t_est * t_gt).sum(-1) / (t_est.norm(dim=-1) * t_gt.norm(dim=-1)).clamp(min=eps)
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))
