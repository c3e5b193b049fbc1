"""
Rotations and rigid transforms for every layer: one implementation for numpy and for torch.

Each function takes a numpy array (or anything ``np.asarray`` reads: lists, scalars) or a torch
tensor and returns the same kind: numpy results are float64; torch results keep the input's
dtype and device and are differentiable (``torch.autograd.gradcheck`` holds in float64).
Leading dimensions are batch dimensions (``...``). This module imports numpy only: the torch
path is taken for torch inputs, so the numpy-only layers (``eval``, ``ros.conversions``) stay
free of torch.

Conventions (the project's, stated once here):

- ``T_ab`` (4, 4) maps points of frame b into frame a: ``X_a = R_ab X_b + t_ab``.
- ``hat(v) = [v]_x``, the cross-product matrix: ``hat(a) @ b = a x b``.
- Quaternions are Hamilton unit quaternions in ROS / TUM order ``(x, y, z, w)``, scalar last.
  Inputs are normalised first (zero or non-finite norm: ``ValueError``); outputs have unit
  norm and ``w >= 0`` (``q`` and ``-q`` are the same rotation; the sign is fixed so that files
  and messages are reproducible).
- ``roll, pitch, yaw`` are fixed-axis angles (URDF / tf2 / REP-103):
  ``R = Rz(yaw) Ry(pitch) Rx(roll)``.

The exponential and logarithm maps and the pose errors (torch) are in
:mod:`trianflow_ros.geometry.se3`.
"""

import sys
from typing import Sequence

import numpy as np

#: Quaternions with a norm below this have no direction.
MIN_QUATERNION_NORM = 1e-12


def _backend(a, name: str, shape: Sequence[int]):
    """
    Return (array module, array) of ``a``: torch for a tensor, else numpy float64.

    :raises ValueError: the trailing dimensions of ``a`` are not ``shape``.
    """
    torch = sys.modules.get('torch')
    if torch is not None and isinstance(a, torch.Tensor):
        xp = torch
    else:
        xp, a = np, np.asarray(a, dtype=np.float64)
    n = len(shape)
    if a.ndim < n or tuple(a.shape[a.ndim - n:]) != tuple(shape):
        want = ', '.join(['...'] + [str(s) for s in shape])
        raise ValueError(f'{name} must have shape ({want}), got {tuple(a.shape)}')
    return xp, a


def _norm(xp, a):
    """Euclidean norms over the last axis."""
    return np.linalg.norm(a, axis=-1) if xp is np else xp.linalg.vector_norm(a, dim=-1)


def _rigid(xp, R, t):
    """Assemble ``[[R, t], [0, 1]]`` (..., 4, 4) from R (..., 3, 3) and t (..., 3)."""
    top = xp.concatenate((R, t[..., None]), -1)                              # (..., 3, 4)
    bottom = xp.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return xp.concatenate((top, bottom), -2)


def hat(v):
    """
    Return the cross-product matrices ``[v]_x`` of vectors (``[a]_x b = a x b``).

    :param v: shape (..., 3).
    :return: shape (..., 3, 3), skew-symmetric.
    """
    xp, v = _backend(v, 'v', (3,))
    o = xp.zeros_like(v[..., 0])
    return xp.stack((o, -v[..., 2], v[..., 1], v[..., 2], o, -v[..., 0], -v[..., 1], v[..., 0],
                     o), -1).reshape(tuple(v.shape[:-1]) + (3, 3))


#: The usual name of :func:`hat` in two-view geometry (``E = [t]_x R``).
skew = hat


def se3_inverse(T):
    """
    Return the inverse of rigid transforms, ``[R | t]^-1 = [R^T | -R^T t]`` (no general inverse).

    :param T: ``T_ab``, shape (..., 4, 4); its last row is not read.
    :return: ``T_ba``, shape (..., 4, 4), last row (0, 0, 0, 1).
    """
    xp, T = _backend(T, 'T', (4, 4))
    Rt = T[..., :3, :3].swapaxes(-1, -2)
    return _rigid(xp, Rt, -(Rt @ T[..., :3, 3:])[..., 0])


def quaternion_to_matrix(q):
    """
    Return the rotation matrices of quaternions ``(x, y, z, w)`` (normalised here).

    :param q: shape (..., 4), any non-zero norm.
    :return: shape (..., 3, 3).
    :raises ValueError: a quaternion of zero (below 1e-12) or non-finite norm.
    """
    xp, q = _backend(q, 'q', (4,))
    norm = _norm(xp, q)
    bad = ~(norm >= MIN_QUATERNION_NORM) | ~xp.isfinite(norm)
    if bool(bad.any()):
        raise ValueError(f'a quaternion (x, y, z, w) of zero or non-finite norm has no '
                         f'rotation: {q[bad][:3].tolist()}')
    q = q / norm[..., None]
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return xp.stack((
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)),
        -1).reshape(tuple(q.shape[:-1]) + (3, 3))


def matrix_to_quaternion(R):
    """
    Return the unit quaternions ``(x, y, z, w)``, ``w >= 0``, of rotation matrices.

    Shepperd's method: the largest of ``4 w^2, 4 x^2, 4 y^2, 4 z^2`` (from the trace and the
    diagonal) is taken as a square root and the three others are divided by it, so no
    component loses digits. ``R`` is not re-orthonormalised (see :func:`nearest_rotation`);
    the result is normalised.

    :param R: shape (..., 3, 3).
    :return: shape (..., 4).
    """
    xp, R = _backend(R, 'R', (3, 3))
    r00, r11, r22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    tr = r00 + r11 + r22
    # 4 q_k q in the order (w, x, y, z) for k = w, x, y, z: the rows of a symmetric 4x4
    a, b, c = R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]
    e, f, g = R[..., 0, 1] + R[..., 1, 0], R[..., 0, 2] + R[..., 2, 0], R[..., 1, 2] + R[..., 2, 1]
    rows = xp.stack((xp.stack((1.0 + tr, a, b, c), -1),
                     xp.stack((a, 1.0 + r00 - r11 - r22, e, f), -1),
                     xp.stack((b, e, 1.0 + r11 - r00 - r22, g), -1),
                     xp.stack((c, f, g, 1.0 + r22 - r00 - r11), -1)), -2)
    k = xp.stack((tr, r00, r11, r22), -1).argmax(-1)                         # largest q_k^2
    if xp is np:
        pick = np.arange(4) == k[..., None]
    else:
        pick = xp.arange(4, device=R.device) == k[..., None]
    row = (rows * pick[..., None]).sum(-2)                                   # (..., 4) = 4 q_k q
    s = 2.0 * xp.sqrt((row * pick).sum(-1))[..., None]                       # 4 q_k
    q = xp.where(pick, s / 4, row / s)
    q = xp.concatenate((q[..., 1:], q[..., :1]), -1)                          # (x, y, z, w)
    q = q / _norm(xp, q)[..., None]
    return xp.where(q[..., 3:] < 0, -q, q)


def quaternion_slerp(q0, q1, s):
    """
    Interpolate unit quaternions along the shortest arc (spherical linear interpolation).

    ``q1`` is negated where ``q0 . q1 < 0`` (the same rotation, the shorter way); nearly
    equal quaternions (``q0 . q1 > 1 - 1e-12``) are interpolated linearly and normalised.

    :param q0: unit quaternions (x, y, z, w) at s = 0, shape (..., 4).
    :param q1: unit quaternions at s = 1, shape (..., 4), the kind of ``q0``.
    :param s: the fraction(s) in [0, 1], a number or shape (...).
    :return: unit quaternions, shape (..., 4).
    """
    xp, q0 = _backend(q0, 'q0', (4,))
    _, q1 = _backend(q1, 'q1', (4,))
    if xp is np:
        s = np.asarray(s, dtype=np.float64)[..., None]
    else:
        s = xp.as_tensor(s, dtype=q0.dtype, device=q0.device)[..., None]
    d = (q0 * q1).sum(-1)[..., None]
    q1 = xp.where(d < 0, -q1, q1)
    d = abs(d)
    near = d > 1.0 - 1e-12
    lerp = q0 + s * (q1 - q0)
    lerp = lerp / _norm(xp, lerp)[..., None]
    theta = xp.arccos(xp.where(near, 0.5 * xp.ones_like(d), d))      # not used where near
    arc = (xp.sin((1 - s) * theta) * q0 + xp.sin(s * theta) * q1) / xp.sin(theta)
    return xp.where(near, lerp, arc)


def nearest_rotation(M):
    """
    Return the rotations closest to matrices in the Frobenius norm (SVD, determinant +1).

    :param M: shape (..., 3, 3), e.g. a rotation that has drifted from orthonormality.
    :return: shape (..., 3, 3), ``U diag(1, 1, det(U V^T)) V^T``.
    """
    xp, M = _backend(M, 'M', (3, 3))
    U, _, Vh = xp.linalg.svd(M)
    flip = xp.linalg.det(U @ Vh) < 0
    U = xp.where(flip[..., None, None], xp.concatenate((U[..., :2], -U[..., 2:]), -1), U)
    return U @ Vh


def rpy_to_matrix(rpy):
    """
    Return the rotations of fixed-axis angles: ``R = Rz(yaw) Ry(pitch) Rx(roll)``.

    :param rpy: (roll, pitch, yaw) in radians, shape (..., 3).
    :return: shape (..., 3, 3).
    """
    xp, rpy = _backend(rpy, 'rpy', (3,))
    cr, cp, cy = xp.cos(rpy[..., 0]), xp.cos(rpy[..., 1]), xp.cos(rpy[..., 2])
    sr, sp, sy = xp.sin(rpy[..., 0]), xp.sin(rpy[..., 1]), xp.sin(rpy[..., 2])
    return xp.stack((cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr,
                     sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr,
                     -sp, cp * sr, cp * cr), -1).reshape(tuple(rpy.shape[:-1]) + (3, 3))


def transform_from_xyz_rpy(values):
    """
    Return rigid transforms from ``[x, y, z, roll, pitch, yaw]`` (metres, radians).

    The rotation is :func:`rpy_to_matrix` of the last three numbers (URDF / tf2 order).

    :param values: shape (..., 6), e.g. a list of six numbers (a ROS parameter).
    :return: shape (..., 4, 4).
    :raises ValueError: not six finite numbers.
    """
    try:
        xp, v = _backend(values, 'values', (6,))
        ok = bool(xp.isfinite(v).all())
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f'expected [x, y, z, roll, pitch, yaw] (6 finite numbers), got '
                         f'{list(values)}')
    return _rigid(xp, rpy_to_matrix(v[..., 3:]), v[..., :3])
