"""
Odometry metrics: the KITTI segment errors, ATE and RPE (numpy, no torch).

Poses are ``T_world_cam`` (N, 4, 4) of paired frames (same index = same instant). Equations
cited in the comments:

KITTI odometry protocol (Geiger et al., CVPR 2012; the devkit's ``evaluate_odometry``), as the
original TrianFlow evaluator runs it (notes Sec. 5.3):

    (1) d_0 = 0, d_i = d_{i-1} + ||p_i - p_{i-1}||        distance along the ground truth
    (2) for every start frame f = 0, 10, 20, ... and length L in 100, 200, ..., 800 m:
        l = first frame with d_l > d_f + L (the segment is skipped if there is none)
    (3) E = (G_f^-1 G_l)^-1 (P_f^-1 P_l)                 pose error of the segment
    (4) t_err = ||t(E)|| / L,  r_err = acos(clip((tr R(E) - 1) / 2, -1, 1)) / L
    (5) t_err, r_err = means over all segments of all lengths; reported as t_err * 100 (%)
        and r_err * 180 / pi * 100 (deg / 100 m)

The estimate is first aligned as the original does (:func:`.alignment.align_kitti_original`):
both re-based to their first pose, 7-DoF Umeyama on the positions. (The devkit writes (3) as
``(P_f^-1 P_l)^-1 (G_f^-1 G_l)``, the inverse of E: same norm of translation, same angle.)

Absolute trajectory error (Sturm et al., IROS 2012, Sec. VI-B), after aligning the estimate
with a similarity S (Sim(3)) or a rigid transform (SE(3)), :mod:`.alignment`:

    (6) ATE = sqrt(1/n sum ||p_gt,i - S p_est,i||^2)

Relative pose error (Sturm et al., Sec. VI-A) over pairs (i, j = i + delta), or j the first
frame more than delta metres further along the ground truth:

    (7) E_ij = (G_i^-1 G_j)^-1 (P_i^-1 P_j)
    (8) RPE_trans = sqrt(mean ||t(E_ij)||^2) (m),  RPE_rot = sqrt(mean angle(R(E_ij))^2) (deg)

with angle = atan2(||vee(R - R^T)|| / 2, (tr R - 1) / 2), exact also for the small angles of
frame-to-frame motion where the devkit's acos of (4) loses digits.

A rigid alignment cancels in (3) and (7); the Sim(3) scale does not (it scales P's
translations).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from trianflow_ros.eval.alignment import align_kitti_original, ALIGN_MODES, align_poses
from trianflow_ros.eval.trajectory_io import associate, MAX_DT, Trajectory
from trianflow_ros.geometry.lie import se3_inverse

#: KITTI segment lengths, m.
KITTI_SEGMENT_LENGTHS = (100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0)
#: KITTI start-frame step, frames.
KITTI_STEP = 10


def _check_pair(gt: np.ndarray, est: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt, dtype=np.float64)
    est = np.asarray(est, dtype=np.float64)
    if gt.ndim != 3 or gt.shape[1:] != (4, 4) or gt.shape != est.shape:
        raise ValueError(f'gt and est must both have shape (N, 4, 4), got {gt.shape} and '
                         f'{est.shape}')
    return gt, est


def kitti_rotation_angle(R: np.ndarray) -> np.ndarray:
    """
    Rotation angles of rotation matrices, as the KITTI devkit computes them, eq. (4).

    Loses precision for small angles (acos near 1); used for the KITTI figures only.

    :param R: shape (..., 3, 3).
    :return: ``acos(clip((tr R - 1) / 2, -1, 1))`` in radians, shape (...).
    """
    R = np.asarray(R, dtype=np.float64)
    tr = R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2]
    return np.arccos(np.clip(0.5 * (tr - 1.0), -1.0, 1.0))


def rotation_angle(R: np.ndarray) -> np.ndarray:
    """
    Rotation angles of rotation matrices, accurate for small and large angles.

    ``atan2(sin, cos)`` with ``cos = (tr R - 1) / 2`` and ``sin = ||vee(R - R^T)|| / 2``.

    :param R: shape (..., 3, 3).
    :return: angles in [0, pi], radians, shape (...).
    """
    R = np.asarray(R, dtype=np.float64)
    cos = 0.5 * (R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1.0)
    axis = np.stack((R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                     R[..., 1, 0] - R[..., 0, 1]), axis=-1)
    return np.arctan2(0.5 * np.linalg.norm(axis, axis=-1), cos)


def trajectory_distances(positions: np.ndarray) -> np.ndarray:
    """
    Distance travelled up to every frame, eq. (1).

    :param positions: shape (N, 3).
    :return: shape (N,), starting with 0.
    """
    positions = np.asarray(positions, dtype=np.float64)
    steps = np.sqrt(np.sum(np.diff(positions, axis=0) ** 2, axis=1))
    return np.concatenate(([0.0], np.cumsum(steps)))


def relative_errors(gt: np.ndarray, est: np.ndarray, first: np.ndarray, last: np.ndarray,
                    devkit: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """
    Compute translation norms and rotation angles of the pose errors of frame pairs, (3), (7).

    :param gt: ground-truth poses, shape (N, 4, 4).
    :param est: estimated poses, shape (N, 4, 4).
    :param first: indices of the first frames, shape (M,).
    :param last: indices of the second frames, shape (M,).
    :param devkit: compute as the KITTI devkit and the original evaluator (general matrix
        inverse, :func:`kitti_rotation_angle`) instead of the rigid inverse ``[R^T | -R^T t]``
        and :func:`rotation_angle` (which give the same figures up to rounding for exact
        rotations; files store rotations to a few digits only).
    :return: ``||t(E)||`` (M,) and ``angle(R(E))`` in radians (M,).
    """
    gt, est = _check_pair(gt, est)
    first = np.asarray(first, dtype=int)
    last = np.asarray(last, dtype=int)
    inv = np.linalg.inv if devkit else se3_inverse
    delta_gt = inv(gt[first]) @ gt[last]
    delta_est = inv(est[first]) @ est[last]
    err = inv(delta_gt) @ delta_est
    angle = kitti_rotation_angle if devkit else rotation_angle
    return np.sqrt(np.sum(err[:, :3, 3] ** 2, axis=1)), angle(err[:, :3, :3])


@dataclass
class KittiSegments:
    """
    Per-segment KITTI errors, eqs. (2)-(4).

    :param first: start frame of every segment, shape (M,).
    :param last: end frame, shape (M,).
    :param length: segment length L, m, shape (M,).
    :param t_err: translation error per metre (fraction), shape (M,).
    :param r_err: rotation error per metre, rad/m, shape (M,).
    """

    first: np.ndarray
    last: np.ndarray
    length: np.ndarray
    t_err: np.ndarray
    r_err: np.ndarray

    def __len__(self) -> int:
        """Return the number of segments."""
        return len(self.first)

    def mean(self, length: Optional[float] = None) -> Tuple[Optional[float], Optional[float]]:
        """
        Mean errors in the reported units, eq. (5).

        :param length: only segments of this length (None: all).
        :return: (t_err %, r_err deg/100 m), or (None, None) without segments.
        """
        keep = np.ones(len(self), bool) if length is None else self.length == length
        if not np.any(keep):
            return None, None
        return (float(np.mean(self.t_err[keep]) * 100.0),
                float(np.mean(self.r_err[keep]) * 180.0 / np.pi * 100.0))


def kitti_segments(gt: np.ndarray, est: np.ndarray,
                   lengths: Sequence[float] = KITTI_SEGMENT_LENGTHS,
                   step: int = KITTI_STEP) -> KittiSegments:
    """
    KITTI segment errors of an (already aligned) estimate, eqs. (1)-(4).

    :param gt: ground-truth poses, shape (N, 4, 4).
    :param est: estimated poses of the same frames, shape (N, 4, 4).
    :param lengths: segment lengths, m.
    :param step: start-frame step, frames.
    :return: the segments (empty when the trajectory is shorter than every length).
    """
    gt, est = _check_pair(gt, est)
    if step < 1:
        raise ValueError(f'step must be >= 1, got {step}')
    dist = trajectory_distances(gt[:, :3, 3])                         # (1)
    first, last, seg_len = [], [], []
    for f in range(0, len(gt), step):                                 # (2)
        for L in lengths:
            # First frame l with d_l > d_f + L (dist is non-decreasing).
            lidx = int(np.searchsorted(dist, dist[f] + L, side='right'))
            if lidx >= len(gt):
                continue
            first.append(f)
            last.append(lidx)
            seg_len.append(float(L))
    first_a = np.array(first, dtype=int)
    last_a = np.array(last, dtype=int)
    length_a = np.array(seg_len, dtype=np.float64)
    if len(first_a) == 0:
        empty = np.zeros(0)
        return KittiSegments(first_a, last_a, length_a, empty, empty.copy())
    t, r = relative_errors(gt, est, first_a, last_a, devkit=True)   # (3)
    return KittiSegments(first_a, last_a, length_a, t / length_a, r / length_a)   # (4)


def ate_rmse(gt_positions: np.ndarray, est_positions: np.ndarray) -> float:
    """
    Root-mean-square position error of paired positions, eq. (6) (align first).

    :param gt_positions: shape (N, 3).
    :param est_positions: shape (N, 3).
    :return: RMSE, m.
    """
    g = np.asarray(gt_positions, dtype=np.float64)
    e = np.asarray(est_positions, dtype=np.float64)
    if g.shape != e.shape or g.ndim != 2 or g.shape[1] != 3 or len(g) == 0:
        raise ValueError(f'positions must both have shape (N>0, 3), got {g.shape} and '
                         f'{e.shape}')
    return float(np.sqrt(np.mean(np.sum((g - e) ** 2, axis=1))))


def rpe_pairs(gt: np.ndarray, delta: float = 1, unit: str = 'frames'
              ) -> Tuple[np.ndarray, np.ndarray]:
    """
    Frame pairs (i, j) of the relative pose error.

    :param gt: ground-truth poses, shape (N, 4, 4).
    :param delta: frames (j = i + delta) or metres (j = first frame with d_j > d_i + delta).
    :param unit: 'frames' or 'm'.
    :return: indices i and j, shape (M,) each (empty when no pair fits).
    """
    n = len(gt)
    if unit == 'frames':
        k = int(delta)
        if k < 1 or k != delta:
            raise ValueError(f'an RPE delta in frames must be an integer >= 1, got {delta}')
        i = np.arange(max(n - k, 0))
        return i, i + k
    if unit == 'm':
        if not delta > 0:
            raise ValueError(f'an RPE delta in metres must be > 0, got {delta}')
        dist = trajectory_distances(np.asarray(gt)[:, :3, 3])
        j = np.searchsorted(dist, dist + delta, side='right')
        i = np.flatnonzero(j < n)
        return i, j[i]
    raise ValueError(f"unknown RPE unit {unit!r}; expected 'frames' or 'm'")


def rpe_rmse(gt: np.ndarray, est: np.ndarray, delta: float = 1, unit: str = 'frames'
             ) -> Tuple[Optional[float], Optional[float]]:
    """
    Relative pose error, eqs. (7)-(8), of an (already scaled) estimate.

    :param gt: ground-truth poses, shape (N, 4, 4).
    :param est: estimated poses of the same frames, shape (N, 4, 4).
    :param delta: pair distance (see :func:`rpe_pairs`).
    :param unit: 'frames' or 'm'.
    :return: (translation RMSE m, rotation RMSE deg), or (None, None) without pairs.
    """
    gt, est = _check_pair(gt, est)
    i, j = rpe_pairs(gt, delta, unit)
    if len(i) == 0:
        return None, None
    t, r = relative_errors(gt, est, i, j)
    return float(np.sqrt(np.mean(t ** 2))), float(np.degrees(np.sqrt(np.mean(r ** 2))))


# --------------------------------------------------------------------------------------------
# Pairing and the full evaluation
# --------------------------------------------------------------------------------------------

def pair_trajectories(gt: Trajectory, est: Trajectory, max_dt: float = MAX_DT,
                      method: str = 'greedy') -> Tuple[Trajectory, Trajectory, List[str]]:
    """
    Pair the frames of two trajectories.

    With stamps on both sides they are associated by time stamp (:func:`.associate`).
    Otherwise frames pair by index: equal lengths, or an estimate shorter than the ground
    truth pairs with its first frames (noted).

    :param gt: ground truth.
    :param est: estimate.
    :param max_dt: largest stamp difference, s.
    :param method: association method, 'greedy' or 'nearest'.
    :return: (paired gt, paired est, notes).
    :raises ValueError: fewer than 2 pairs, or an estimate longer than an unstamped ground
        truth.
    """
    notes: List[str] = []
    if gt.stamps is not None and est.stamps is not None:
        ig, ie = associate(gt.stamps, est.stamps, max_dt=max_dt, method=method)
        if len(ig) < min(len(gt), len(est)):
            notes.append(f'associated {len(ig)} of {len(est)} estimated and {len(gt)} '
                         f'ground-truth poses by time stamp (max dt {max_dt:g} s)')
        if len(ig) < 2:
            raise ValueError(f'only {len(ig)} poses of {est.source or "the estimate"} match '
                             f'{gt.source or "the ground truth"} within {max_dt:g} s: check '
                             f'that both use the same clock (or pair by index: drop the '
                             f'stamps)')
        return gt.subset(ig), est.subset(ie), notes
    if len(est) > len(gt):
        raise ValueError(f'{est.source or "the estimate"} has {len(est)} poses but '
                         f'{gt.source or "the ground truth"} only {len(gt)}; without stamps on '
                         f'both, frames pair by index')
    if len(est) < len(gt):
        notes.append(f'estimate has {len(est)} poses, ground truth {len(gt)}: evaluated on '
                     f'the first {len(est)} frames')
    if len(est) < 2:
        raise ValueError(f'need at least 2 poses to evaluate, got {len(est)}')
    keep = np.arange(len(est))
    return gt.subset(keep), est, notes


@dataclass
class OdometryResult:
    """
    Figures of one evaluated trajectory (:func:`evaluate_odometry`).

    :param t_err: KITTI translation error, %, or None (no segment fits).
    :param r_err: KITTI rotation error, deg/100 m, or None.
    :param ate: ATE of the chosen alignment, m.
    :param ate_se3: ATE after SE(3) alignment, m.
    :param ate_sim3: ATE after Sim(3) alignment, m (None if the scale cannot be fitted).
    :param rpe_trans: RPE translation RMSE after the chosen alignment, m.
    :param rpe_rot: RPE rotation RMSE, deg.
    :param scale: Sim(3) scale of the estimate (None if it cannot be fitted).
    :param frames: number of paired frames.
    :param length_m: length of the paired ground truth, m.
    :param align: the alignment used ('sim3', 'se3', 'none').
    :param segments: the KITTI segments.
    :param segment_lengths: the segment lengths asked for, m.
    :param aligned_est: the estimate after the chosen alignment (paired frames).
    :param gt: the paired ground truth.
    :param notes: remarks (short sequences, partial association).
    """

    t_err: Optional[float]
    r_err: Optional[float]
    ate: Optional[float]
    ate_se3: float
    ate_sim3: Optional[float]
    rpe_trans: Optional[float]
    rpe_rot: Optional[float]
    scale: Optional[float]
    frames: int
    length_m: float
    align: str
    segments: KittiSegments
    segment_lengths: Tuple[float, ...]
    aligned_est: Trajectory
    gt: Trajectory
    notes: List[str] = field(default_factory=list)

    def per_length(self) -> Dict[float, Tuple[Optional[float], Optional[float], int]]:
        """Return (t_err %, r_err deg/100 m, count) for every segment length."""
        return {L: (*self.segments.mean(L), int(np.sum(self.segments.length == L)))
                for L in self.segment_lengths}

    def as_dict(self) -> Dict:
        """Return the JSON-ready figures (None where undefined)."""
        d = {k: getattr(self, k) for k in ('t_err', 'r_err', 'ate', 'rpe_trans', 'rpe_rot',
                                           'ate_se3', 'ate_sim3', 'scale', 'frames',
                                           'length_m', 'align')}
        d['segments'] = len(self.segments)
        d['notes'] = list(self.notes)
        return d


def evaluate_odometry(gt: Trajectory, est: Trajectory, align: str = 'sim3',
                      segment_lengths: Sequence[float] = KITTI_SEGMENT_LENGTHS,
                      step: int = KITTI_STEP, rpe_delta: float = 1, rpe_unit: str = 'frames',
                      max_dt: float = MAX_DT, association: str = 'greedy') -> OdometryResult:
    """
    Evaluate an estimated trajectory against ground truth: KITTI t_err / r_err, ATE, RPE.

    KITTI errors follow the original evaluator (re-base, ``align``-DoF Umeyama, eqs. 1-5;
    'sim3' = its 7-DoF). ATE is reported after SE(3) and Sim(3) alignment; ``ate`` and RPE use
    ``align``. Undefined figures (a sequence shorter than every segment) are None with a note.

    :param gt: ground truth.
    :param est: estimate.
    :param align: 'sim3' (monocular), 'se3' or 'none'.
    :param segment_lengths: KITTI segment lengths, m.
    :param step: KITTI start-frame step, frames.
    :param rpe_delta: RPE pair distance.
    :param rpe_unit: 'frames' or 'm'.
    :param max_dt: largest stamp difference when associating by time, s.
    :param association: 'greedy' or 'nearest'.
    :return: the figures.
    :raises ValueError: unknown option, too few paired frames, or degenerate positions.
    """
    if align not in ALIGN_MODES:
        raise ValueError(f'unknown alignment {align!r}; expected one of {ALIGN_MODES}')
    lengths = tuple(float(L) for L in segment_lengths)
    if not lengths or min(lengths) <= 0:
        raise ValueError(f'segment lengths must be > 0, got {segment_lengths}')
    g, e, notes = pair_trajectories(gt, est, max_dt=max_dt, method=association)

    # KITTI protocol: re-base, align as the original, segments (1)-(5).
    kitti_est, kitti_gt, _ = align_kitti_original(e.poses, g.poses, align)
    segments = kitti_segments(kitti_gt, kitti_est, lengths, step)
    t_err, r_err = segments.mean()
    length = float(trajectory_distances(g.positions)[-1])
    if t_err is None:
        notes.append(f'the ground truth is {length:.1f} m long, shorter than the shortest '
                     f'segment ({min(lengths):g} m): KITTI t_err / r_err are undefined '
                     f'(use shorter segment lengths)')

    # ATE (6) with both alignments.
    se3_est, _ = align_poses(e.poses, g.poses, 'se3')
    ate_se3 = ate_rmse(g.positions, se3_est[:, :3, 3])
    try:
        sim3_est, sim = align_poses(e.poses, g.poses, 'sim3')
        ate_sim3: Optional[float] = ate_rmse(g.positions, sim3_est[:, :3, 3])
        scale: Optional[float] = sim.scale
    except ValueError as ex:
        sim3_est, ate_sim3, scale = None, None, None
        notes.append(f'Sim(3) alignment failed ({ex})')
    if align == 'sim3':
        if sim3_est is None:
            raise ValueError('Sim(3) alignment is impossible (the estimate does not move); '
                             'use --align se3 or none')
        aligned, ate = sim3_est, ate_sim3
    elif align == 'se3':
        aligned, ate = se3_est, ate_se3
    else:
        aligned, ate = e.poses.copy(), ate_rmse(g.positions, e.positions)

    # RPE (7)-(8): rigid parts cancel; the Sim(3) scale is in ``aligned``.
    rpe_trans, rpe_rot = rpe_rmse(g.poses, aligned, rpe_delta, rpe_unit)
    if rpe_trans is None:
        notes.append(f'no frame pair {rpe_delta:g} {rpe_unit} apart: RPE undefined')
    return OdometryResult(
        t_err=t_err, r_err=r_err, ate=ate, ate_se3=ate_se3, ate_sim3=ate_sim3,
        rpe_trans=rpe_trans, rpe_rot=rpe_rot, scale=scale, frames=len(g), length_m=length,
        align=align, segments=segments, segment_lengths=lengths,
        aligned_est=Trajectory(aligned, e.stamps, e.source), gt=g, notes=notes)
