"""
Relative pose from an essential matrix: the four-fold decomposition and the cheirality test.

``T_21`` maps frame-1 points into frame 2 (X_2 = R X_1 + t), so E = [t]_x R and x2^T F x1 = 0.
The translation is known only up to scale and is returned with unit norm. References are to
Hartley & Zisserman, 2nd ed. (H&Z).
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from trianflow_ros.geometry.checks import check_shape
from trianflow_ros.geometry.se3 import make_pose
from trianflow_ros.geometry.threads import one_cpu_thread


_W_PAIR = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
                        [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
_T_SIGNS = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]], dtype=torch.float64)


@dataclass
class PoseResult:
    """
    Relative pose chosen by the cheirality test.

    :param R: rotation of T_21, shape (B, 3, 3).
    :param t: translation direction of T_21, unit norm, shape (B, 3).
    :param T_21: pose mapping frame-1 points into frame 2, shape (B, 4, 4).
    :param num_positive: number of (masked) points in front of both cameras, shape (B,) int64.
    :param positive: points in front of both cameras for the chosen candidate, shape (B, N),
        bool (False for masked-out points).
    """

    R: torch.Tensor
    t: torch.Tensor
    T_21: torch.Tensor
    num_positive: torch.Tensor
    positive: torch.Tensor


def decompose_essential(E: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Return the four (R, t) candidates of an essential matrix (H&Z Result 9.19).

    With E = U diag(1, 1, 0) V^T (det U = det V = +1) and W = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    the candidates are (U W V^T, u3), (U W V^T, -u3), (U W^T V^T, u3), (U W^T V^T, -u3), with
    u3 the last column of U. E need not be exactly essential (noise): only its two largest
    singular directions are used.

    :param E: essential matrices, shape (B, 3, 3).
    :return: R (B, 4, 3, 3) with det +1 and t (B, 4, 3) with unit norm, in that order.
        Not meant for gradients (SVD of a matrix with repeated singular values).
    """
    check_shape(E, 'E', ('B', 3, 3))
    U, _, Vh = torch.linalg.svd(E)
    # Flipping the sign of U or V^T keeps U diag(1, 1, 0) V^T up to the sign of E, which the
    # epipolar constraint does not see; it makes both proper rotations.
    U = U * torch.linalg.det(U).sign()[:, None, None]
    Vh = Vh * torch.linalg.det(Vh).sign()[:, None, None]
    W = _W_PAIR.to(E)                                                     # W, W^T
    R = ((U.unsqueeze(1) @ W) @ Vh.unsqueeze(1)).repeat_interleave(2, dim=1)
    t = U[:, None, :, 2] * _T_SIGNS.to(E)
    return R, t


def recover_pose(E: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, K1: torch.Tensor,
                 K2: torch.Tensor, mask: Optional[torch.Tensor] = None,
                 max_depth: float = 50.0) -> PoseResult:
    """
    Choose the (R, t) of E that puts most correspondences in front of both cameras.

    All four candidates of :func:`decompose_essential` get the depths of every correspondence
    in both cameras (all batch elements and candidates at once, each element with its own K and
    E), and the candidate with the most points at depths in (0, max_depth) in both cameras wins
    (H&Z Sec. 9.6.3). The depths solve z1 R y1 + t = z2 y2 in closed form (its cross products
    with y2 and with R y1; exact for consistent matches, and for noisy ones equal in sign to a
    triangulation except for nearly parallel rays, which lie beyond ``max_depth``). As in
    cv2.recoverPose, points farther than ``max_depth`` (in units of the baseline) are not
    counted: their sign is decided by noise.

    :param E: essential matrices with x2^T K2^-T E K1^-1 x1 = 0, shape (B, 3, 3).
    :param x1: pixel coordinates in image 1, shape (B, N, 2).
    :param x2: pixel coordinates in image 2, shape (B, N, 2).
    :param K1: intrinsics of camera 1, shape (B, 3, 3).
    :param K2: intrinsics of camera 2, shape (B, 3, 3).
    :param mask: optional correspondences to use (e.g. RANSAC inliers), shape (B, N), bool or
        non-negative weights (> 0 = used).
    :param max_depth: points with a depth beyond this (baseline = 1) do not vote.
    :return: :class:`PoseResult`. Not differentiable. On CPU the call runs on one intra-op
        thread (see :func:`~trianflow_ros.geometry.threads.one_cpu_thread`).
    """
    check_shape(E, 'E', ('B', 3, 3))
    b = E.shape[0]
    check_shape(x1, 'x1', (b, 'N', 2))
    check_shape(x2, 'x2', x1.shape)
    check_shape(K1, 'K1', (b, 3, 3))
    check_shape(K2, 'K2', (b, 3, 3))
    n = x1.shape[1]
    if mask is None:
        mask = torch.ones(b, n, dtype=torch.bool, device=x1.device)
    check_shape(mask, 'mask', (b, n))
    mask = mask > 0
    dtype = x1.dtype
    same_K = K2 is K1
    E, K1 = E.detach().to(dtype), K1.detach().to(dtype)
    K2 = K1 if same_K else K2.detach().to(dtype)
    x1, x2 = x1.detach(), x2.detach()

    with one_cpu_thread(x1.device):
        return _cheirality(E, x1, x2, K1, K2, mask, max_depth)


def _cheirality(E, x1, x2, K1, K2, mask, max_depth) -> PoseResult:
    """Vote of the four candidates, see :func:`recover_pose`."""
    b, n = x1.shape[:2]
    # the SVD in float64 even for float32 inputs: a float32 SVD leaves R orthonormal only to a
    # few 1e-7, which a VO chaining many relative poses accumulates
    R, t = (v.to(E.dtype) for v in decompose_essential(E.double()))      # (B, 4, 3, 3), (B, 4, 3)
    # rays of every pair with its own K, channels-first (B, 3, N), y = K^-1 [x, 1]
    K1i = torch.linalg.inv(K1)
    K2i = K1i if K2 is K1 else torch.linalg.inv(K2)
    y1 = torch.baddbmm(K1i[:, :, 2:], K1i[:, :, :2], x1.transpose(1, 2))
    y2 = torch.baddbmm(K2i[:, :, 2:], K2i[:, :, :2], x2.transpose(1, 2))
    # depths of z1 a + t = z2 y2 (a = R y1): the cross products with y2 and with a give
    # z1 = ((t.y2)(a.y2) - (t.a)|y2|^2) / d and z2 = ((t.y2)|a|^2 - (t.a)(a.y2)) / d with
    # d = |a x y2|^2 = |a|^2 |y2|^2 - (a.y2)^2 and |a| = |y1|. Candidates 1 and 3 are 0 and 2
    # with t negated, which negates both depths: only two rotations are evaluated.
    R2, t2 = R[:, 0::2], t[:, 0::2]                                       # (B, 2, 3, 3), (B, 2, 3)
    a = R2 @ y1.unsqueeze(1)                                              # (B, 2, 3, N)
    ay2 = (a * y2.unsqueeze(1)).sum(2)                                    # (B, 2, N)
    ta = (t2.unsqueeze(2) @ a).squeeze(2)
    ty2 = t2 @ y2
    aa = y1.square().sum(1, keepdim=True)                                 # (B, 1, N)
    yy = y2.square().sum(1, keepdim=True)
    d = (aa * yy - ay2.square()).clamp_(min=1e-30)                        # 0: parallel rays
    z1 = (ty2 * ay2 - ta * yy) / d
    z2 = (ty2 * aa - ta * ay2) / d
    z1 = torch.stack((z1, -z1), dim=2).flatten(1, 2)                      # (B, 4, N)
    z2 = torch.stack((z2, -z2), dim=2).flatten(1, 2)
    ok = (z1 > 0) & (z2 > 0) & (z1 < max_depth) & (z2 < max_depth) & mask.unsqueeze(1)
    counts = ok.sum(dim=-1)                                               # (B, 4)
    best = counts.argmax(dim=1)                                           # (B,)
    ar = torch.arange(b, device=E.device)
    R_best = R[ar, best]
    t_best = t[ar, best]
    return PoseResult(R=R_best, t=t_best, T_21=make_pose(R_best, t_best),
                      num_positive=counts[ar, best].to(torch.int64), positive=ok[ar, best])
