#!/usr/bin/env python3
"""
Frames per second at 832x256: the VO front ends against the 30-line baseline, in one process.

Issue 15 ("Speed"): the classical mode at 832x256 should run at least 2x the frames/s of the
baseline (``bench/baseline_vo.py``) at 832x256. KITTI 06 ``image_0`` frames 0..N-1 are read
once, resized to 832x256 (``cv2.INTER_AREA``, K scaled, as ``bench/node_latency.py``) and
then, for each of ``--repeats`` rounds, every runner processes all of them in turn (the order
rotates per round, so a load change on a shared machine hits every runner alike):

- ``baseline``: ``baseline_vo`` on the resized frames;
- ``dis``: ``VisualOdometry`` with ``vo.flow_provider dis`` (no depth output, as
  ``trianflow-vo --no-depth-output``);
- ``klt``: the same with the sparse front end (``vo.flow_provider klt``, its defaults);
- ``klt_motion``: the sparse front end without any dense flow (``bench/vo_real.py``'s
  ``classical_klt_motion``: ``vo.klt_prior=motion``, ``vo.klt_levels=3``,
  ``vo.klt_track_window=9``).

Per runner: the median fps over the rounds (and every round's), the ATE (m, Sim(3)) of the
first round, LOST frames; ``ratio_vs_baseline`` = median fps / the baseline's median fps.
Torch runs on one thread (``--threads``), as ``bench/vo_real.py``. Last line: one JSON
object. Run from the repository root::

    .venv/bin/python bench/fps_832.py [--frames 51] [--repeats 3] [--set vo.klt_points=1500]
"""

import argparse
import json
from pathlib import Path
import sys
import time
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.baseline_vo import baseline_vo, evaluate  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from trianflow_ros.config import Config, parse_override, set_value  # noqa: E402
from trianflow_ros.data.kitti_odometry import KittiOdometrySequence  # noqa: E402
from trianflow_ros.vo import TrackingState, VisualOdometry  # noqa: E402

DEFAULT_DATA = REPO_ROOT.parent / 'shared' / 'data'
SIZE = (832, 256)                                          # (width, height)
RUNNERS = ('baseline', 'dis', 'klt', 'klt_motion')
#: config overrides of the runners beyond their flow provider.
RUNNER_OVERRIDES = {'klt_motion': ['vo.klt_prior=motion', 'vo.klt_levels=3',
                                   'vo.klt_track_window=9']}


def load_frames(data: Path, count: int):
    """Return KITTI 06 image_0 frames 0..count-1 at 832x256 (RGB uint8), K and ground truth."""
    seq = KittiOdometrySequence(data / 'kitti_odometry_seq06', '06', camera=0)
    n = min(count, len(seq))
    frames = []
    for i in range(n):
        grey = seq.load_image(i)[:, :, 0]
        frames.append(cv2.resize(np.repeat(grey[:, :, None], 3, axis=2), SIZE,
                                 interpolation=cv2.INTER_AREA))
    h, w = seq.load_image(0).shape[:2]
    K = np.asarray(seq.K, dtype=np.float64).copy()
    K[0] *= SIZE[0] / w
    K[1] *= SIZE[1] / h
    return frames, K, np.asarray(seq.camera_poses[:n], dtype=np.float64)


def run_vo(frames: List[np.ndarray], K: np.ndarray, flow: str, overrides: List[str]):
    """Run the odometry with ``flow`` over the frames; return (poses, lost, seconds)."""
    cfg = Config()
    cfg.vo.device = 'cpu'
    cfg.vo.flow_provider = flow
    for text in overrides:
        key, value = parse_override(text)
        set_value(cfg, key, value)
    vo = VisualOdometry(cfg)
    vo.output_depth = False
    t0 = time.perf_counter()
    results = [vo.step(float(i), im, K) for i, im in enumerate(frames)]
    seconds = time.perf_counter() - t0
    poses = np.stack([r.T_world_cam for r in results])
    return poses, sum(r.state == TrackingState.LOST for r in results), seconds


def main(argv: Optional[List[str]] = None) -> int:
    """Run the comparison; print a table and one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA)
    parser.add_argument('--frames', type=int, default=51)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--runners', default=','.join(RUNNERS))
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        help='config override KEY=VALUE of the VO runners (repeatable)')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runners = [r for r in args.runners.split(',') if r]
    frames, K, gt = load_frames(args.data, args.frames)
    fps: Dict[str, List[float]] = {r: [] for r in runners}
    quality: Dict[str, Dict] = {}
    for round_ in range(args.repeats):
        order = runners[round_ % len(runners):] + runners[:round_ % len(runners)]
        for name in order:
            if name == 'baseline':
                res = baseline_vo(frames, K)
                poses, lost, seconds = res.poses, res.lost, res.seconds
            else:
                poses, lost, seconds = run_vo(frames, K, name.split('_')[0],
                                              RUNNER_OVERRIDES.get(name, []) + args.overrides)
            fps[name].append(len(frames) / seconds)
            if name not in quality:
                quality[name] = dict(evaluate(poses, gt), lost=int(lost))
    base = float(np.median(fps['baseline'])) if 'baseline' in fps else None
    out = {'meta': {'frames': len(frames), 'size': f'{SIZE[0]}x{SIZE[1]}',
                    'repeats': args.repeats, 'threads': args.threads,
                    'overrides': args.overrides}}
    print('| runner | median fps | fps per round | x baseline | ATE (m) | lost |')
    print('|---|---|---|---|---|---|')
    for name in runners:
        med = float(np.median(fps[name]))
        ratio = med / base if base else None
        q = quality[name]
        out[name] = {'fps': med, 'fps_rounds': [round(f, 2) for f in fps[name]],
                     'ratio_vs_baseline': ratio, 'ate': q['ate'], 'rpe_rot': q['rpe_rot'],
                     'lost': q['lost']}
        print(f'| {name} | {med:.2f} | {", ".join(f"{f:.2f}" for f in fps[name])} | '
              f'{"-" if ratio is None else f"{ratio:.2f}"} | {q["ate"]:.3f} | {q["lost"]} |')
    print(json.dumps(out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
