"""
Alignment of point sets and trajectories: Umeyama's similarity / rigid fit (numpy, no torch).

Umeyama, "Least-squares estimation of transformation parameters between two point patterns",
IEEE TPAMI 13(4), 1991. For points x_i (source) and y_i (target), i = 1..n, the (c, R, t) that
minimise ``1/n sum ||y_i - (c R x_i + t)||^2`` are (numbering of the paper):

    (34) mu_x = 1/n sum x_i                 (35) mu_y = 1/n sum y_i
    (36) sigma_x^2 = 1/n sum ||x_i - mu_x||^2
    (37) sigma_y^2 = 1/n sum ||y_i - mu_y||^2
    (38) Sigma_xy = 1/n sum (y_i - mu_y)(x_i - mu_x)^T = U D V^T (SVD)
    (39) S = I, or diag(1, .., 1, -1) if det(Sigma_xy) < 0
    (40) R = U S V^T
    (41) t = mu_y - c R mu_x
    (42) c = tr(D S) / sigma_x^2             (c = 1 for a rigid fit)
    (43) if rank(Sigma_xy) = m - 1: S = I if det(U) det(V) = 1, else diag(1, .., 1, -1)

S is chosen here from det(U) det(V), which equals the sign of det(Sigma_xy) when Sigma_xy has
full rank (39) and is (43) otherwise; with lower rank (collinear points) R is one of several
equally good rotations.

A similarity ``A = (s, R, t)`` acts on a pose ``T = [R_T | t_T]`` as the original KITTI evaluator
applies it (notes Sec. 5.3): first ``t_T <- s t_T``, then ``T <- [R | t] T``, so positions map as
``p -> s R p + t`` and orientations as ``R_T -> R R_T``.
"""

from dataclasses import dataclass
from typing import Tuple

import numpy as np

#: Alignment modes of trajectories: 7-DoF similarity, 6-DoF rigid, none.
ALIGN_MODES = ('sim3', 'se3', 'none')


@dataclass
class Similarity:
    """
    A similarity transform ``p -> scale * rotation @ p + translation``.

    :param rotation: shape (3, 3), a proper rotation.
    :param translation: shape (3,).
    :param scale: > 0 (1 for a rigid transform).
    """

    rotation: np.ndarray
    translation: np.ndarray
    scale: float = 1.0

    @classmethod
    def identity(cls) -> 'Similarity':
        """Return the identity transform."""
        return cls(np.eye(3), np.zeros(3), 1.0)

    @property
    def matrix(self) -> np.ndarray:
        """Return the 4x4 matrix ``[s R | t; 0 1]``."""
        m = np.eye(4)
        m[:3, :3] = self.scale * self.rotation
        m[:3, 3] = self.translation
        return m

    def apply_points(self, points: np.ndarray) -> np.ndarray:
        """
        Transform points.

        :param points: shape (N, 3).
        :return: ``s R p + t`` for every point, shape (N, 3).
        """
        return self.scale * np.asarray(points, dtype=np.float64) @ self.rotation.T \
            + self.translation

    def apply_poses(self, poses: np.ndarray) -> np.ndarray:
        """
        Transform poses ``T_world_cam`` into the target frame (module docstring).

        :param poses: shape (N, 4, 4).
        :return: poses with translation ``s R t_T + t`` and rotation ``R R_T``, (N, 4, 4).
        """
        poses = np.array(poses, dtype=np.float64)
        poses[:, :3, 3] *= self.scale                      # t <- s t
        rigid = np.eye(4)
        rigid[:3, :3] = self.rotation
        rigid[:3, 3] = self.translation
        return rigid @ poses                               # T <- A T


def umeyama(source: np.ndarray, target: np.ndarray, with_scale: bool = True) -> Similarity:
    """
    Least-squares similarity (or rigid) transform mapping ``source`` onto ``target``.

    Minimises ``sum ||target_i - (s R source_i + t)||^2`` (Umeyama 1991, eqs. 34-43).

    :param source: points x_i, shape (N, 3) (e.g. estimated positions).
    :param target: points y_i, shape (N, 3) (e.g. ground-truth positions).
    :param with_scale: fit the scale (7-DoF Sim(3)); False fits a rigid SE(3) transform.
    :return: the transform; ``apply_points(source)`` approximates ``target``.
    :raises ValueError: shape mismatch, fewer than 2 points, non-finite values, or (with scale)
        all source points equal.
    """
    x = np.asarray(source, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3 or x.shape != y.shape:
        raise ValueError(f'source and target must both have shape (N, 3), got {x.shape} and '
                         f'{y.shape}')
    if len(x) < 2:
        raise ValueError(f'alignment needs at least 2 points, got {len(x)}')
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError('alignment points contain NaN or inf')
    n = len(x)
    mu_x = x.mean(axis=0)                                   # (34)
    mu_y = y.mean(axis=0)                                   # (35)
    xc = x - mu_x
    yc = y - mu_y
    sigma_x2 = np.sum(xc * xc) / n                          # (36)
    cov = yc.T @ xc / n                                     # (38) Sigma_xy
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:            # (39) / (43)
        S[2, 2] = -1.0
    R = U @ S @ Vt                                          # (40)
    if with_scale:
        if sigma_x2 <= 1e-12 * max(1.0, float(np.sum(yc * yc)) / n):
            raise ValueError('cannot fit a scale: all source points coincide')
        c = float(np.sum(D * np.diag(S)) / sigma_x2)        # (42) tr(DS) / sigma_x^2
    else:
        c = 1.0
    t = mu_y - c * R @ mu_x                                 # (41)
    return Similarity(R, t, c)


def rebase(poses: np.ndarray) -> np.ndarray:
    """
    Express poses relative to the first one: ``T_i <- T_0^-1 T_i``.

    :param poses: shape (N, 4, 4), N >= 1.
    :return: shape (N, 4, 4); the first is the identity (up to rounding).
    """
    poses = np.asarray(poses, dtype=np.float64)
    return np.linalg.inv(poses[0]) @ poses


def align_poses(est: np.ndarray, gt: np.ndarray, mode: str = 'sim3'
                ) -> Tuple[np.ndarray, Similarity]:
    """
    Align estimated poses to paired ground-truth poses by their positions.

    :param est: estimated ``T_world_cam``, shape (N, 4, 4).
    :param gt: ground-truth ``T_world_cam`` of the same frames, shape (N, 4, 4).
    :param mode: 'sim3' (Umeyama with scale), 'se3' (rigid) or 'none' (identity).
    :return: the aligned estimate (N, 4, 4) and the transform applied.
    :raises ValueError: unknown mode, shape mismatch, or a degenerate point set.
    """
    est = np.asarray(est, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if est.shape != gt.shape or est.ndim != 3 or est.shape[1:] != (4, 4):
        raise ValueError(f'est and gt must both have shape (N, 4, 4), got {est.shape} and '
                         f'{gt.shape}')
    if mode not in ALIGN_MODES:
        raise ValueError(f'unknown alignment {mode!r}; expected one of {ALIGN_MODES}')
    if mode == 'none':
        return est.copy(), Similarity.identity()
    sim = umeyama(est[:, :3, 3], gt[:, :3, 3], with_scale=(mode == 'sim3'))
    return sim.apply_poses(est), sim


def align_kitti_original(est: np.ndarray, gt: np.ndarray, mode: str = 'sim3'
                         ) -> Tuple[np.ndarray, np.ndarray, Similarity]:
    """
    Reproduce the original KITTI odometry evaluator's alignment (notes Sec. 5.3).

    Both trajectories are re-based to their first pose (:func:`rebase`), then ``mode`` 'sim3'
    fits a 7-DoF Umeyama transform on the positions (estimate -> ground truth) and applies it
    to every estimated pose as ``t *= s; T <- A T`` ('se3': 6-DoF, no scale; 'none': re-base
    only).

    :param est: estimated poses, shape (N, 4, 4).
    :param gt: ground-truth poses of the same frames, shape (N, 4, 4).
    :param mode: 'sim3', 'se3' or 'none'.
    :return: (aligned estimate, re-based ground truth, the transform).
    """
    gt0 = rebase(gt)
    aligned, sim = align_poses(rebase(est), gt0, mode)
    return aligned, gt0, sim
