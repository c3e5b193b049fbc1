#!/usr/bin/env python3
"""
The 30-line monocular VO baseline of issue 12: DIS flow + essential matrix, unit steps.

Per consecutive pair of frames (grey, native resolution): OpenCV DIS optical flow
(``PRESET_MEDIUM``) forward and backward; the pixels whose forward-backward difference is below
0.5 px and whose target lies in the image are the matches, of which 5000 are drawn at random
(seeded); ``cv2.findEssentialMat`` (RANSAC, probability 0.999, threshold 0.1 px) and
``cv2.recoverPose`` give R and the direction of t; every step's translation is scaled to length 1
and the steps are chained. The trajectory is compared with the ground truth after Sim(3)
alignment (``trianflow_ros.eval``), which absorbs the arbitrary global scale.

Lens distortion: the issue's baseline does NOT undistort anything (it was measured on KITTI,
whose images are rectified). :func:`baseline_vo` undistorts the matches with
``cv2.undistortPoints`` (``cv2.fisheye.undistortPoints`` for the equidistant model; both to
pixels of the same K) only when ``distortion`` is given.

A pair whose essential matrix cannot be estimated (fewer than 5 matches, no model) keeps the
previous pose and is counted in ``lost``.

Run (from the repository root; last printed line = one JSON object)::

    .venv/bin/python bench/baseline_vo.py                        # KITTI 06 frames 0-50
    .venv/bin/python bench/baseline_vo.py tum ../shared/data/vamr_checkerboard --undistort
"""

import argparse
from dataclasses import dataclass
import json
from pathlib import Path
import sys
import time
from typing import Iterable, List, Optional

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from trianflow_ros.data.camera_files import describe_distortion  # noqa: E402
from trianflow_ros.eval.odometry_metrics import evaluate_odometry  # noqa: E402
from trianflow_ros.eval.trajectory_io import Trajectory  # noqa: E402
from trianflow_ros.geometry.distortion import as_distortion  # noqa: E402

DEFAULT_DATA = REPO_ROOT.parent / 'shared' / 'data'


@dataclass
class BaselineResult:
    """
    Output of :func:`baseline_vo`.

    :ivar poses: (N, 4, 4) float64 ``T_world_cam`` (world = first camera; unit steps).
    :ivar lost: number of pairs without an essential matrix (their step is the identity).
    :ivar seconds: wall time of the whole run (flow, matching, E, pose).
    """

    poses: np.ndarray
    lost: int
    seconds: float


def _grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def baseline_vo(frames: Iterable[np.ndarray], K: np.ndarray, distortion=None,
                num_matches: int = 5000, seed: int = 0) -> BaselineResult:
    """
    Run the baseline over frames (consecutive frames form the pairs).

    :param frames: images, each (H, W) uint8 grey or (H, W, 3) uint8 RGB, one size.
    :param K: (3, 3) intrinsics of the frames.
    :param distortion: lens distortion (``Distortion``, ``(model, coeffs)``, text or None);
        when given the matches are undistorted before the essential matrix.
    :param num_matches: matches drawn per pair.
    :param seed: seed of the match draw and of OpenCV's RANSAC.
    :return: :class:`BaselineResult`.
    """
    t0 = time.perf_counter()
    K = np.asarray(K, np.float64)
    dist = as_distortion(distortion)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    rng = np.random.default_rng(seed)
    cv2.setRNGSeed(seed)
    poses, lost, prev = [np.eye(4)], 0, None
    for image in frames:
        cur = _grey(np.asarray(image))
        if prev is None:
            prev = cur
            continue
        fwd, bwd = dis.calc(prev, cur, None), dis.calc(cur, prev, None)
        h, w = cur.shape
        x1 = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1).astype(np.float32)
        x2 = x1 + fwd
        back = cv2.remap(bwd, x2[..., 0], x2[..., 1], cv2.INTER_LINEAR)
        ok = ((np.linalg.norm(fwd + back, axis=-1) < 0.5) & (x2[..., 0] >= 0)
              & (x2[..., 0] <= w - 1) & (x2[..., 1] >= 0) & (x2[..., 1] <= h - 1))
        idx = np.flatnonzero(ok)
        idx = rng.choice(idx, min(num_matches, idx.size), replace=False)
        p1, p2 = x1.reshape(-1, 2)[idx].astype(np.float64), x2.reshape(-1, 2)[idx].astype(
            np.float64)
        if dist is not None:
            p1, p2 = _undistort(p1, K, dist), _undistort(p2, K, dist)
        E, mask = (cv2.findEssentialMat(p1, p2, K, cv2.RANSAC, 0.999, 0.1)
                   if len(idx) >= 5 else (None, None))
        step = np.eye(4)
        if E is not None and E.shape[0] >= 3:
            _, R, t, _ = cv2.recoverPose(E[:3], p1, p2, K, mask=mask)
            step[:3, :3], step[:3, 3] = R, t[:, 0] / max(np.linalg.norm(t), 1e-12)
        else:
            lost += 1
        poses.append(poses[-1] @ np.linalg.inv(step))          # T_w2 = T_w1 T_21^-1
        prev = cur
    return BaselineResult(np.stack(poses), lost, time.perf_counter() - t0)


def _undistort(points: np.ndarray, K: np.ndarray, dist) -> np.ndarray:
    """Undistorted pixels (same K) of raw pixels (N, 2), with OpenCV."""
    kind, coeffs = dist.to_opencv()
    pts = points.reshape(-1, 1, 2)
    if kind == 'fisheye':
        out = cv2.fisheye.undistortPoints(pts, K, np.array(coeffs), P=K)
    else:
        out = cv2.undistortPoints(pts, K, np.array(coeffs), P=K)
    return out.reshape(-1, 2)


def evaluate(poses: np.ndarray, gt: np.ndarray, stamps: Optional[np.ndarray] = None) -> dict:
    """
    ATE (Sim(3)) and RPE (one frame) of an estimate against ground truth (``trianflow_ros.eval``).

    :param poses: (N, 4, 4) estimate ``T_world_cam``.
    :param gt: (N, 4, 4) ground truth ``T_world_cam`` (re-based on its first pose here).
    :return: {'ate', 'rpe_trans', 'rpe_rot', 'scale'} (m, m, deg, Sim(3) scale).
    """
    stamps = np.arange(len(poses), dtype=np.float64) if stamps is None else stamps
    gt = np.linalg.inv(gt[0]) @ gt
    res = evaluate_odometry(Trajectory(gt, stamps, 'ground truth'),
                            Trajectory(poses, stamps, 'baseline'), align='sim3')
    return {'ate': res.ate_sim3, 'rpe_trans': res.rpe_trans, 'rpe_rot': res.rpe_rot,
            'scale': res.scale}


def main(argv: Optional[List[str]] = None) -> int:
    """Run the baseline on a KITTI or TUM-layout sequence; print a summary and one JSON line."""
    from trianflow_ros.vo.cli import kitti_source, tum_source

    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('source', nargs='?', default='kitti', choices=('kitti', 'tum'),
                        help='kitti (a KITTI odometry root) or tum (a TUM-layout folder)')
    parser.add_argument('path', nargs='?', default=None,
                        help='default: ../shared/data/kitti_odometry_seq06')
    parser.add_argument('--sequence', default='06', help='KITTI sequence (default 06)')
    parser.add_argument('--camera', type=int, default=0, help='KITTI camera (default 0, grey)')
    parser.add_argument('--stride', type=int, default=1, help='frame stride')
    parser.add_argument('--max-frames', type=int, default=None, help='at most N frames')
    parser.add_argument('--undistort', action='store_true',
                        help="undistort the matches with the reader's distortion")
    parser.add_argument('--seed', type=int, default=0, help='seed of the draws and RANSAC')
    args = parser.parse_args(argv)
    if args.stride < 1 or (args.max_frames is not None and args.max_frames < 2):
        parser.exit(2, 'baseline_vo: --stride must be >= 1 and --max-frames >= 2\n')
    path = args.path or str(DEFAULT_DATA / 'kitti_odometry_seq06')
    try:
        if args.source == 'kitti':
            source = kitti_source(argparse.Namespace(root=path, sequence=args.sequence,
                                                     camera=args.camera))
        else:
            source = tum_source(argparse.Namespace(path=path, distortion=None))
    except (ValueError, OSError) as e:
        parser.exit(2, f'baseline_vo: error: {e}\n')
    indices = list(range(0, source.count, args.stride))[:args.max_frames]
    K = source.frame(indices[0])[2]
    frames = (source.frame(i)[1] for i in indices)
    dist = source.distortion if args.undistort else None
    result = baseline_vo(frames, K, dist, seed=args.seed)
    summary = {'sequence': source.name, 'frames': len(indices), 'stride': args.stride,
               'lost': result.lost, 'fps': len(indices) / result.seconds,
               'undistorted': describe_distortion(dist)}
    if source.gt is not None:
        summary.update(evaluate(result.poses, source.gt[indices], source.stamps[indices]))
    print(f'{source.name}: {len(indices)} frames (stride {args.stride}), ATE(Sim3) '
          f'{summary.get("ate")}, RPE {summary.get("rpe_trans")} m / {summary.get("rpe_rot")} '
          f'deg, {result.lost} lost, {summary["fps"]:.1f} frames/s')
    print(json.dumps(summary))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
