#!/usr/bin/env python3
"""
Benchmark the relative-pose solver against OpenCV on real KITTI frames.

Data: KITTI odometry sequence 06, frames 0-50, left grey camera at its native 1226x370
resolution (the original resized to 832x256 only for its networks; the classical solvers run
on native pixels here), with the ground-truth poses of ``dataset/poses/06.txt``.

Correspondences: OpenCV DIS dense flow (``PRESET_MEDIUM``) forward (i -> j) and backward
(j -> i); a pixel is kept when it lands inside image j and passes the forward-backward check
``|flow_ij(x) + flow_ji(x + flow_ij(x))| < 1 px`` (bilinear lookup); 5000 of the kept pixels
are drawn without replacement by ``np.random.default_rng((seed, i, j))``. Flow is computed once
per pair, cached, and is not part of any timing.

Solvers, on identical ``x1, x2`` arrays:

* ours: ``ransac_essential`` + ``recover_pose`` (``trianflow_ros.geometry``), batch B = 1,
  one ``torch.Generator`` seeded per pair, timed with ``time.perf_counter`` after a warm-up
  call (synchronised on CUDA). ``--batch`` also times all pairs of a stride in one batch.
* OpenCV, as the original VO's ``solve_pose_flow``: ``cv2.findEssentialMat`` (RANSAC,
  prob 0.99, threshold 0.1 px, single focal fx and principal point) + ``cv2.recoverPose``.
  The points are passed as ``(x1, x2)`` so that ``R, t`` map frame-i points into frame j
  (the original passed ``(x2, x1)`` and got the inverse pose). The original called this 10
  times per frame; the timing here is for ONE call.

Errors against ground truth ``T_ji = inv(T_w_j) @ T_w_i``: rotation error = angle of
``R_est^T R_gt``, translation-direction error = angle between ``t_est`` and ``t_gt``.

The last printed line is one JSON object (stride-1 keys, plus ``_s3`` keys for stride 3).

Run from the repository root::

    .venv/bin/python bench/pose_solver.py
"""

import argparse
import dataclasses
import json
import os
from pathlib import Path
import platform
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from trianflow_ros.geometry.se3 import direction_error_deg  # noqa: E402
from trianflow_ros.geometry.se3 import rotation_error_deg  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'
SEQUENCE_DIR = Path('kitti_odometry_seq06') / 'dataset'
SEQUENCE = '06'


@dataclasses.dataclass
class Sequence06:
    """
    Frames, intrinsics and ground-truth poses of the benchmark sequence.

    :ivar images: grey uint8 images (H, W), one per frame.
    :ivar K: intrinsics (3, 3) float64, from ``P0``.
    :ivar poses: ``T_world_cam`` (F, 4, 4) float64, one per frame.
    """

    images: List[np.ndarray]
    K: np.ndarray
    poses: np.ndarray


@dataclasses.dataclass
class PairData:
    """
    One frame pair with its correspondences and ground truth.

    :ivar i: index of the first frame.
    :ivar j: index of the second frame.
    :ivar x1: pixels in frame i, (N, 2) float64.
    :ivar x2: matching pixels in frame j, (N, 2) float64.
    :ivar T_ji: ground-truth pose (4, 4) mapping frame-i points into frame j.
    :ivar num_valid: pixels that passed the checks before sampling.
    """

    i: int
    j: int
    x1: np.ndarray
    x2: np.ndarray
    T_ji: np.ndarray
    num_valid: int


@dataclasses.dataclass
class SolveResult:
    """
    A solver's estimate for one pair.

    :ivar R: rotation (3, 3) of ``T_ji``.
    :ivar t: translation direction (3,) of ``T_ji``.
    :ivar ms: solver time in milliseconds (median over repeats).
    :ivar num_inliers: RANSAC inlier count.
    """

    R: np.ndarray
    t: np.ndarray
    ms: float
    num_inliers: int


def load_sequence(data_root: Path, num_frames: Optional[int] = None) -> Sequence06:
    """
    Load the images, ``K`` (from ``P0``) and ground-truth poses of sequence 06.

    :param data_root: the shared data folder holding ``kitti_odometry_seq06``.
    :param num_frames: load only the first frames (all when None).
    :return: the sequence.
    """
    root = Path(data_root) / SEQUENCE_DIR
    seq_dir = root / 'sequences' / SEQUENCE
    if not seq_dir.is_dir():
        raise FileNotFoundError(
            f'KITTI sequence folder {seq_dir} not found; pass --data pointing at the folder '
            'that holds kitti_odometry_seq06')
    K = None
    for line in (seq_dir / 'calib.txt').read_text().splitlines():
        if line.startswith('P0:'):
            K = np.array(line.split()[1:], dtype=np.float64).reshape(3, 4)[:, :3]
    if K is None:
        raise ValueError(f'no "P0:" line in {seq_dir / "calib.txt"}')
    rows = np.loadtxt(root / 'poses' / f'{SEQUENCE}.txt', dtype=np.float64).reshape(-1, 3, 4)
    poses = np.tile(np.eye(4), (rows.shape[0], 1, 1))
    poses[:, :3, :] = rows
    paths = sorted((seq_dir / 'image_0').glob('*.png'))
    count = min(len(paths), poses.shape[0])
    if num_frames is not None:
        count = min(count, num_frames)
    images = []
    for path in paths[:count]:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f'cannot read image {path}')
        images.append(image)
    return Sequence06(images=images, K=K, poses=poses[:count])


def relative_pose(poses: np.ndarray, i: int, j: int) -> np.ndarray:
    """
    Ground-truth relative pose ``T_ji = inv(T_w_j) @ T_w_i``.

    :param poses: ``T_world_cam`` (F, 4, 4).
    :return: (4, 4), mapping frame-i points into frame j.
    """
    return np.linalg.inv(poses[j]) @ poses[i]


def flow_correspondences(image1: np.ndarray, image2: np.ndarray, num_points: int,
                         rng: np.random.Generator, fb_threshold: float = 1.0
                         ) -> Tuple[np.ndarray, np.ndarray, int]:
    """
    Sample forward-backward consistent matches from DIS dense flow.

    :param image1: grey uint8 image (H, W) of frame i.
    :param image2: grey uint8 image (H, W) of frame j.
    :param num_points: matches to draw without replacement (all if fewer are valid).
    :param rng: random generator for the draw.
    :param fb_threshold: maximum forward-backward error in pixels.
    :return: ``x1, x2`` (N, 2) float64 pixel coordinates and the number of valid pixels.
    """
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow_12 = dis.calc(image1, image2, None)
    flow_21 = dis.calc(image2, image1, None)
    height, width = image1.shape
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    map_u = u + flow_12[..., 0]
    map_v = v + flow_12[..., 1]
    back = cv2.remap(flow_21, map_u, map_v, interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=(1e6, 1e6))
    inside = (map_u >= 0) & (map_u <= width - 1) & (map_v >= 0) & (map_v <= height - 1)
    fb_error = np.linalg.norm(flow_12 + back, axis=-1)
    valid = np.flatnonzero((inside & (fb_error < fb_threshold)).ravel())
    chosen = np.sort(rng.choice(valid, size=min(num_points, valid.size), replace=False))
    x1 = np.stack((u.ravel()[chosen], v.ravel()[chosen]), axis=-1).astype(np.float64)
    x2 = np.stack((map_u.ravel()[chosen], map_v.ravel()[chosen]), axis=-1).astype(np.float64)
    return x1, x2, int(valid.size)


def frame_pairs(num_frames: int, stride: int, max_pairs: Optional[int] = None
                ) -> List[Tuple[int, int]]:
    """
    List the pairs ``(i, i + stride)`` of a sequence (every start frame, so they overlap).

    :param max_pairs: keep only the first pairs (all when None).
    """
    pairs = [(i, i + stride) for i in range(num_frames - stride)]
    return pairs if max_pairs is None else pairs[:max_pairs]


def build_pairs(sequence: Sequence06, pairs: Sequence[Tuple[int, int]], num_points: int = 5000,
                seed: int = 0, cache: Optional[Dict[Tuple[int, int], PairData]] = None,
                progress: bool = True) -> List[PairData]:
    """
    Compute the correspondences of frame pairs, reusing ``cache`` when given.

    :param pairs: ``(i, j)`` frame indices.
    :param num_points: matches per pair.
    :param seed: base seed; pair (i, j) draws with ``np.random.default_rng((seed, i, j))``.
    :param cache: dictionary filled and reused across calls (e.g. both strides).
    :param progress: show a tqdm progress bar.
    """
    cache = {} if cache is None else cache
    out = []
    for i, j in tqdm(pairs, desc='DIS flow', disable=not progress, file=sys.stderr):
        if (i, j) not in cache:
            rng = np.random.default_rng((seed, i, j))
            x1, x2, num_valid = flow_correspondences(sequence.images[i], sequence.images[j],
                                                     num_points, rng)
            cache[(i, j)] = PairData(i=i, j=j, x1=x1, x2=x2,
                                     T_ji=relative_pose(sequence.poses, i, j),
                                     num_valid=num_valid)
        out.append(cache[(i, j)])
    return out


def solve_opencv(x1: np.ndarray, x2: np.ndarray, K: np.ndarray, threshold_px: float = 0.1,
                 repeats: int = 1) -> SolveResult:
    """
    Solve ``T_ji`` the way the original VO did, with one findEssentialMat + recoverPose call.

    :param x1: pixels in frame i (N, 2).
    :param x2: pixels in frame j (N, 2).
    :param K: intrinsics (3, 3); like the original, only fx and (cx, cy) are used.
    :param threshold_px: RANSAC threshold in pixels (the original's 0.1).
    :param repeats: timed repeats (each reseeds OpenCV's RNG with 0); the median is reported.
    """
    focal, pp = float(K[0, 0]), (float(K[0, 2]), float(K[1, 2]))
    times = []
    for _ in range(repeats):
        cv2.setRNGSeed(0)
        start = time.perf_counter()
        E, mask = cv2.findEssentialMat(x1, x2, focal=focal, pp=pp, method=cv2.RANSAC,
                                       prob=0.99, threshold=threshold_px)
        num_inliers = int(mask.sum()) if mask is not None else 0
        if E is None or E.shape != (3, 3):
            # several (or no) solutions stacked: recoverPose needs exactly one
            E = np.eye(3) if E is None else E[:3]
        _, R, t, _ = cv2.recoverPose(E, x1, x2, focal=focal, pp=pp, mask=mask)
        times.append((time.perf_counter() - start) * 1e3)
    return SolveResult(R=R, t=t.ravel(), ms=statistics.median(times), num_inliers=num_inliers)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _solver_kwargs(threshold_px: Optional[float], num_hypotheses: Optional[int]) -> dict:
    kwargs = {}
    if threshold_px is not None:
        kwargs['threshold_px'] = threshold_px
    if num_hypotheses is not None:
        kwargs['num_hypotheses'] = num_hypotheses
    return kwargs


def solve_ours(x1: torch.Tensor, x2: torch.Tensor, K: torch.Tensor, seeds: Sequence[int],
               threshold_px: Optional[float] = None, num_hypotheses: Optional[int] = None,
               repeats: int = 1) -> Tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    """
    Run ``ransac_essential`` + ``recover_pose`` on a batch and time it.

    :param x1: pixels in frame i (B, N, 2), already on the target device and dtype.
    :param x2: pixels in frame j (B, N, 2).
    :param K: intrinsics (B, 3, 3), used for both frames.
    :param seeds: the generator seed; a batch uses its first element.
    :param threshold_px: RANSAC threshold; None keeps the solver's default.
    :param num_hypotheses: hypotheses per RANSAC; None keeps the solver's default.
    :param repeats: timed repeats with the same seed; the median time is reported.
    :return: ``R`` (B, 3, 3), ``t`` (B, 3), milliseconds for the whole batch, inlier counts (B,).
    """
    from trianflow_ros.geometry.pose import recover_pose
    from trianflow_ros.geometry.ransac import ransac_essential

    kwargs = _solver_kwargs(threshold_px, num_hypotheses)
    device = x1.device
    times = []
    for _ in range(repeats):
        generator = torch.Generator(device=device)
        generator.manual_seed(int(seeds[0]))
        _sync(device)
        start = time.perf_counter()
        ransac = ransac_essential(x1, x2, K, K, generator=generator, **kwargs)
        pose = recover_pose(ransac.model, x1, x2, K, K, mask=ransac.inliers)
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return pose.R, pose.t, statistics.median(times), ransac.num_inliers


def pose_errors(R: np.ndarray, t: np.ndarray, T_gt: np.ndarray) -> Tuple[float, float]:
    """
    Rotation error and translation-direction error in degrees against a ground-truth pose.

    :param R: estimated rotation (3, 3).
    :param t: estimated translation (3,), any scale.
    :param T_gt: ground-truth pose (4, 4).
    """
    R_est = torch.as_tensor(np.asarray(R, dtype=np.float64)).reshape(1, 3, 3)
    t_est = torch.as_tensor(np.asarray(t, dtype=np.float64)).reshape(1, 3)
    R_gt = torch.as_tensor(T_gt[None, :3, :3])
    t_gt = torch.as_tensor(T_gt[None, :3, 3])
    return (float(rotation_error_deg(R_est, R_gt)[0]),
            float(direction_error_deg(t_est, t_gt)[0]))


def run_stride(pairs: Sequence[PairData], K: np.ndarray, device: str = 'cpu',
               dtype: torch.dtype = torch.float64, seed: int = 0, repeats: int = 1,
               batch: bool = False, threshold_px: Optional[float] = None,
               num_hypotheses: Optional[int] = None, run_ours: bool = True,
               progress: bool = True) -> Dict[str, object]:
    """
    Run both solvers on every pair and collect errors and times.

    :param pairs: the pairs with their correspondences.
    :param K: intrinsics (3, 3).
    :param device: torch device of our solver.
    :param dtype: torch dtype of our solver's inputs.
    :param seed: base seed of our solver's per-pair generator (``seed * 100003 + i``).
    :param repeats: timed repeats per pair and solver (median).
    :param batch: also time all pairs as one batch.
    :param threshold_px: our RANSAC threshold (None = solver default).
    :param num_hypotheses: our hypothesis count (None = solver default).
    :param run_ours: False runs only OpenCV (e.g. while the solver is missing).
    :return: dict with per-pair lists ``rot_opencv, tdir_opencv, ms_opencv, inl_opencv`` (and the
        same with ``_ours``), ``rot_diff, tdir_diff`` (ours against OpenCV's estimate), plus
        ``ms_ours_batch`` (ms per pair) when ``batch``.
    """
    torch_device = torch.device(device)
    K_t = torch.as_tensor(K, dtype=dtype, device=torch_device).reshape(1, 3, 3)
    out: Dict[str, object] = {'pairs': [(p.i, p.j) for p in pairs]}
    out['rot_gt'] = [pose_errors(np.eye(3), p.T_ji[:3, 3], p.T_ji)[0] for p in pairs]
    keys = ['rot_opencv', 'tdir_opencv', 'ms_opencv', 'inl_opencv']
    if run_ours:
        keys += ['rot_ours', 'tdir_ours', 'ms_ours', 'inl_ours', 'rot_diff', 'tdir_diff']
    for key in keys:
        out[key] = []

    def to_t(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=dtype, device=torch_device).unsqueeze(0)

    def pair_seed(p: PairData) -> int:
        return seed * 100003 + p.i

    # warm-up of both solvers on the first pair (lazy imports, allocator, CUDA context)
    solve_opencv(pairs[0].x1, pairs[0].x2, K)
    if run_ours:
        solve_ours(to_t(pairs[0].x1), to_t(pairs[0].x2), K_t, [pair_seed(pairs[0])],
                   threshold_px, num_hypotheses)
    for p in tqdm(pairs, desc='solve', disable=not progress, file=sys.stderr):
        cv = solve_opencv(p.x1, p.x2, K, repeats=repeats)
        rot, tdir = pose_errors(cv.R, cv.t, p.T_ji)
        out['rot_opencv'].append(rot)
        out['tdir_opencv'].append(tdir)
        out['ms_opencv'].append(cv.ms)
        out['inl_opencv'].append(cv.num_inliers)
        if run_ours:
            R, t, ms, inl = solve_ours(to_t(p.x1), to_t(p.x2), K_t, [pair_seed(p)],
                                       threshold_px, num_hypotheses, repeats)
            rot, tdir = pose_errors(R[0].cpu().numpy(), t[0].cpu().numpy(), p.T_ji)
            out['rot_ours'].append(rot)
            out['tdir_ours'].append(tdir)
            out['ms_ours'].append(ms)
            out['inl_ours'].append(int(inl[0]))
            T_cv = np.eye(4)
            T_cv[:3, :3], T_cv[:3, 3] = cv.R, cv.t
            rot, tdir = pose_errors(R[0].cpu().numpy(), t[0].cpu().numpy(), T_cv)
            out['rot_diff'].append(rot)
            out['tdir_diff'].append(tdir)
    if run_ours and batch:
        count = min(p.x1.shape[0] for p in pairs)
        x1 = torch.as_tensor(np.stack([p.x1[:count] for p in pairs]), dtype=dtype,
                             device=torch_device)
        x2 = torch.as_tensor(np.stack([p.x2[:count] for p in pairs]), dtype=dtype,
                             device=torch_device)
        Kb = K_t.expand(len(pairs), 3, 3).contiguous()
        solve_ours(x1, x2, Kb, [seed], threshold_px, num_hypotheses)  # warm-up
        R, t, ms, _ = solve_ours(x1, x2, Kb, [seed], threshold_px, num_hypotheses,
                                 max(repeats, 1))
        errors = [pose_errors(R[k].cpu().numpy(), t[k].cpu().numpy(), p.T_ji)
                  for k, p in enumerate(pairs)]
        out['ms_ours_batch'] = ms / len(pairs)
        out['rot_ours_batch'] = [e[0] for e in errors]
        out['tdir_ours_batch'] = [e[1] for e in errors]
    return out


def summarize(result: Dict[str, object]) -> Dict[str, float]:
    """
    Reduce per-pair lists to the reported statistics.

    :return: ``{rot_med, rot_max, tdir_med, tdir_max, ms_med}`` for each of ``opencv`` and
        ``ours`` (suffix ``_opencv`` / ``_ours``), ``speedup``, ``pairs`` and the median
        difference between the two solvers' estimates (``rot_diff_med``, ``tdir_diff_med``).
    """
    summary: Dict[str, float] = {'pairs': len(result['pairs']),
                                 'rot_gt_med': float(np.median(result['rot_gt']))}
    for name in ('opencv', 'ours'):
        if f'rot_{name}' not in result:
            continue
        rot = np.asarray(result[f'rot_{name}'])
        tdir = np.asarray(result[f'tdir_{name}'])
        summary[f'rot_med_{name}'] = float(np.median(rot))
        summary[f'rot_max_{name}'] = float(np.max(rot))
        summary[f'tdir_med_{name}'] = float(np.median(tdir))
        summary[f'tdir_max_{name}'] = float(np.max(tdir))
        summary[f'ms_{name}'] = float(np.median(result[f'ms_{name}']))
        summary[f'inl_med_{name}'] = float(np.median(result[f'inl_{name}']))
    if 'ms_ours' in summary:
        summary['speedup'] = summary['ms_opencv'] / summary['ms_ours']
        summary['rot_diff_med'] = float(np.median(result['rot_diff']))
        summary['tdir_diff_med'] = float(np.median(result['tdir_diff']))
    if 'ms_ours_batch' in result:
        summary['ms_ours_batch'] = float(result['ms_ours_batch'])
        summary['rot_med_ours_batch'] = float(np.median(result['rot_ours_batch']))
        summary['speedup_batch'] = summary['ms_opencv'] / summary['ms_ours_batch']
    return summary


def format_table(summaries: Dict[int, Dict[str, float]]) -> str:
    """
    Render the summaries of each stride as a Markdown table.

    :param summaries: ``{stride: summarize(...)}``.
    """
    head = ('| stride | pairs | solver | rot err median (deg) | rot err max (deg) '
            '| t-dir err median (deg) | t-dir err max (deg) | inliers median '
            '| ms / pair (median) | speedup |')
    lines = [head, '|' + '---|' * 10]
    for stride, s in summaries.items():
        for name, label in (('ours', 'ours (B=1)'), ('opencv', 'OpenCV (1 call)')):
            if f'ms_{name}' not in s:
                continue
            speed = f'{s["speedup"]:.1f}x' if name == 'ours' else '1.0x'
            lines.append(
                f'| {stride} | {s["pairs"]} | {label} | {s[f"rot_med_{name}"]:.3f} '
                f'| {s[f"rot_max_{name}"]:.3f} | {s[f"tdir_med_{name}"]:.2f} '
                f'| {s[f"tdir_max_{name}"]:.2f} | {s[f"inl_med_{name}"]:.0f} '
                f'| {s[f"ms_{name}"]:.2f} | {speed} |')
        if 'ms_ours_batch' in s:
            lines.append(
                f'| {stride} | {s["pairs"]} | ours (batch of {s["pairs"]}) '
                f'| {s["rot_med_ours_batch"]:.3f} | | | | | {s["ms_ours_batch"]:.2f} '
                f'| {s["speedup_batch"]:.1f}x |')
    lines.append('')
    for stride, s in summaries.items():
        if 'rot_diff_med' in s:
            lines.append(f'stride {stride}: ours vs OpenCV estimate, median difference: '
                         f'rotation {s["rot_diff_med"]:.3f} deg, '
                         f't-direction {s["tdir_diff_med"]:.2f} deg; ground-truth rotation '
                         f'per pair: median {s["rot_gt_med"]:.3f} deg')
    return '\n'.join(lines)


def final_json(summaries: Dict[int, Dict[str, float]], device: str, dtype: torch.dtype
               ) -> Dict[str, object]:
    """
    Build the final JSON object: stride-1 keys, then the same keys with ``_s<stride>``.

    :param summaries: ``{stride: summarize(...)}``; the first stride gives the plain keys.
    """
    names = {'rot_med_ours': 'rot_err_deg_ours', 'rot_med_opencv': 'rot_err_deg_opencv',
             'tdir_med_ours': 'tdir_err_deg_ours', 'tdir_med_opencv': 'tdir_err_deg_opencv',
             'rot_max_ours': 'rot_err_max_deg_ours', 'rot_max_opencv': 'rot_err_max_deg_opencv',
             'ms_ours': 'ms_ours', 'ms_opencv': 'ms_opencv', 'speedup': 'speedup',
             'tdir_max_ours': 'tdir_err_max_deg_ours',
             'tdir_max_opencv': 'tdir_err_max_deg_opencv',
             'rot_diff_med': 'rot_diff_deg_ours_vs_opencv', 'rot_gt_med': 'rot_gt_deg',
             'ms_ours_batch': 'ms_ours_batch', 'pairs': 'pairs'}
    out: Dict[str, object] = {}
    for k, (stride, s) in enumerate(summaries.items()):
        suffix = '' if k == 0 else f'_s{stride}'
        for src, dst in names.items():
            if src in s:
                value = s[src]
                out[dst + suffix] = value if isinstance(value, int) else round(value, 4)
    out.update({'device': device, 'dtype': str(dtype).replace('torch.', ''),
                'torch_threads': torch.get_num_threads(), 'opencv_threads': cv2.getNumThreads()})
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA,
                        help='folder holding kitti_odometry_seq06 (default: ../shared/data)')
    parser.add_argument('--strides', type=int, nargs='+', default=[1, 3],
                        help='frame strides; the first gives the plain JSON keys')
    parser.add_argument('--points', type=int, default=5000, help='matches per pair')
    parser.add_argument('--seed', type=int, default=0, help='seed of sampling and RANSAC')
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'],
                        help='device of our solver')
    parser.add_argument('--dtype', default='float64', choices=['float32', 'float64'],
                        help="dtype of our solver's inputs")
    parser.add_argument('--batch', action='store_true',
                        help='also time all pairs of a stride as one batch (ms per pair)')
    parser.add_argument('--repeats', type=int, default=3,
                        help='timed repeats per pair and solver; the median is taken')
    parser.add_argument('--quick', type=int, default=None, metavar='N',
                        help='only the first N pairs of each stride')
    parser.add_argument('--threshold-px', type=float, default=None,
                        help="our RANSAC threshold in px (default: the solver's default)")
    parser.add_argument('--hypotheses', type=int, default=None,
                        help="our RANSAC hypothesis count (default: the solver's default)")
    parser.add_argument('--opencv-only', action='store_true',
                        help='skip our solver (OpenCV baseline only)')
    parser.add_argument('--threads', type=int, default=0,
                        help='torch intra-op threads for our solver (0 = torch default)')
    parser.add_argument('--no-progress', action='store_true', help='hide progress bars')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Run the benchmark, print the table and, last, the JSON line; return the JSON dict."""
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    num_frames = None if args.quick is None else args.quick + max(args.strides)
    sequence = load_sequence(args.data, num_frames)
    cache: Dict[Tuple[int, int], PairData] = {}
    summaries: Dict[int, Dict[str, float]] = {}
    for stride in args.strides:
        pairs = build_pairs(sequence, frame_pairs(len(sequence.images), stride, args.quick),
                            args.points, args.seed, cache, not args.no_progress)
        result = run_stride(pairs, sequence.K, args.device, dtype, args.seed, args.repeats,
                            args.batch, args.threshold_px, args.hypotheses,
                            not args.opencv_only, not args.no_progress)
        summaries[stride] = summarize(result)
    height, width = sequence.images[0].shape
    print(f'KITTI odometry seq 06, {len(sequence.images)} frames at native {width}x{height}, '
          f'{args.points} DIS-flow matches per pair (forward-backward < 1 px, seed {args.seed})')
    print(f'ours: ransac_essential + recover_pose, {args.device}, {args.dtype}, B=1 '
          f'(threshold_px={args.threshold_px or "default"}, '
          f'hypotheses={args.hypotheses or "default"}); OpenCV {cv2.__version__}: one '
          'findEssentialMat(RANSAC, prob 0.99, 0.1 px) + recoverPose call')
    print(f'threads: torch {torch.get_num_threads()}, OpenCV {cv2.getNumThreads()}, '
          f'{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}); '
          f'times = median over pairs of the median of {args.repeats} repeats')
    print(format_table(summaries))
    summary = final_json(summaries, args.device, dtype)
    print(json.dumps(summary))
    return summary


if __name__ == '__main__':
    main()
