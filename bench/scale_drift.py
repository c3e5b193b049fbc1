#!/usr/bin/env python3
"""
Scale drift of the classical VO over long synthetic drives, beside the 30-line baseline.

Issue 12 item 2 ("scale consistent over many frames"): the real sequences of ``../shared/data``
are short (51 KITTI frames), so a slow, steady scale drift hardly shows in their ATE. Here the
synthetic drives (``trianflow_ros.data.synthetic``, seed 2000, 128x416, 10 Hz) run for
``--frames`` frames (default 200: 150-230 m) and the odometry (the ``classical`` configuration:
``VisualOdometry`` with DIS flow, no depth output; ``--set`` adds overrides) is compared with the
baseline (``bench/baseline_vo.py``, unit steps) in the same run. Per kind:

- ``ate``: m, after Sim(3) alignment; ``baseline_ate`` the baseline's;
- ``drift_pct_per_100``: the slope of ``log(estimated step / true step)`` over the frame index
  (least squares, steps of more than 5 cm), in percent per 100 frames: a negative value is a
  shrinking scale;
- ``lost``: LOST frames; ``path_m``: the path length.

Run from the repository root (about 2 minutes for both kinds at 200 frames)::

    scripts/with_env.sh python bench/scale_drift.py [--kinds forward,turns] [--frames 200]
        [--set vo.map_points=8000]

Last line: one JSON object.
"""

import argparse
import json
from pathlib import Path
import sys
from typing import List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.baseline_vo import baseline_vo, evaluate  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from trianflow_ros.config import load_config  # noqa: E402
from trianflow_ros.data.synthetic import KINDS, make_sequence  # noqa: E402
from trianflow_ros.vo import TrackingState, VisualOdometry  # noqa: E402

SEED = 2000
SIZE = (128, 416)                                          # (height, width)


def drift_per_100(poses: np.ndarray, gt: np.ndarray, min_step: float = 0.05) -> float:
    """
    Slope of the log ratio of estimated to true step lengths, in percent per 100 frames.

    :param poses: (N, 4, 4) estimated ``T_world_cam``.
    :param gt: (N, 4, 4) ground truth ``T_world_cam``.
    :param min_step: true steps shorter than this (m) are left out (a stop has no scale).
    :return: the slope (NaN with fewer than 3 usable steps).
    """
    est = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    true = np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1)
    ok = (est > 0) & (true > min_step)
    if int(ok.sum()) < 3:
        return float('nan')
    index = np.nonzero(ok)[0].astype(np.float64)
    slope = np.polyfit(index, np.log(est[ok] / true[ok]), 1)[0]
    return float(100.0 * 100.0 * slope)


def run_kind(kind: str, frames: int, overrides: List[str]) -> dict:
    """Render one drive, run the odometry and the baseline on it; return its figures."""
    seq = make_sequence(kind, frames, *SIZE, seed=SEED)
    images, K = seq.images_uint8(), seq.K.double().numpy()
    gt = np.linalg.inv(seq.poses[0].double().numpy()) @ seq.poses.double().numpy()
    cfg = load_config(None, ['vo.device=cpu', 'vo.flow_provider=dis', *overrides])
    with VisualOdometry(cfg) as vo:
        vo.output_depth = False
        results = [vo.step(i / 10.0, im, K) for i, im in enumerate(images)]
    poses = np.stack([r.T_world_cam for r in results])
    base = baseline_vo(list(images), K)
    return {'frames': frames,
            'path_m': float(np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1).sum()),
            'ate': evaluate(poses, gt)['ate'],
            'drift_pct_per_100': drift_per_100(poses, gt),
            'lost': int(sum(r.state == TrackingState.LOST for r in results)),
            'baseline_ate': evaluate(base.poses, gt)['ate'],
            'baseline_drift_pct_per_100': drift_per_100(base.poses, gt)}


def main(argv: Optional[List[str]] = None) -> int:
    """Run the kinds; print a table and one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--kinds', default='forward,turns')
    parser.add_argument('--frames', type=int, default=200)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        help='config override KEY=VALUE of the odometry (repeatable)')
    args = parser.parse_args(argv)
    if args.frames < 4:
        print('scale_drift: --frames must be at least 4', file=sys.stderr)
        return 2
    unknown = [k for k in args.kinds.split(',') if k and k not in KINDS]
    if unknown:
        print(f'scale_drift: unknown kind {unknown[0]!r}; choose from {", ".join(KINDS)}',
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    out = {'meta': {'frames': args.frames, 'seed': SEED, 'size': f'{SIZE[1]}x{SIZE[0]}',
                    'overrides': args.overrides}}
    print('| kind | frames | path m | ATE m | drift %/100 frames | lost | baseline ATE m |')
    print('|---|---|---|---|---|---|---|')
    for kind in [k for k in args.kinds.split(',') if k]:
        r = run_kind(kind, args.frames, args.overrides)
        out[kind] = r
        print(f'| {kind} | {r["frames"]} | {r["path_m"]:.0f} | {r["ate"]:.3f} | '
              f'{r["drift_pct_per_100"]:+.2f} | {r["lost"]} | {r["baseline_ate"]:.3f} |')
    print(json.dumps(out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
