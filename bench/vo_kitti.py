#!/usr/bin/env python3
"""
Benchmark the visual odometry (``trianflow-vo``) on real frames with the classical provider.

Runs the CLI pipeline (``trianflow_ros.vo.cli.run``, DIS flow ``PRESET_MEDIUM``, no depth
network: the scale is the first baseline, propagated by triangulation) on:

* KITTI odometry seq 06, frames 0-50 (``../shared/data/kitti_odometry_seq06``, left grey
  camera, working resolution 256x832 as the paper), stride 1 and stride 3 (the paper's test);
  ATE after Sim(3) alignment (the scale of a monocular VO is arbitrary) and RPE over one
  processed frame (translation m after the Sim(3) scale, rotation deg);
* the two-frame TUM RGB-D pairs (``../shared/data/tum_rgbd_pairs``, native 640x480, no
  undistortion): for fr1_xyz the relative-pose error against the interpolated ground truth
  (rotation error deg, translation direction error deg; a Sim(3) ATE of two poses is 0 by
  construction); fr3_long_office_household has no ground truth (time only).

Learned networks are benchmarked with ``--checkpoint PATH`` (flow and depth from it); no
weights exist yet. Every per-stage time is the mean over the tracked frames, in ms.

The last printed line is one JSON object. Run from the repository root::

    .venv/bin/python bench/vo_kitti.py [--quick N] [--checkpoint PATH] [--out DIR]
"""

import argparse
import json
from pathlib import Path
import platform
import sys
import tempfile
from typing import Dict, List, Optional

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from trianflow_ros.eval.trajectory_io import read_kitti  # noqa: E402
from trianflow_ros.vo.cli import build_parser, run  # noqa: E402

DEFAULT_DATA = REPO_ROOT.parent / 'shared' / 'data'
STAGES = ('flow', 'depth', 'select', 'solver', 'scale', 'total')


def angle_deg(R: np.ndarray) -> float:
    """Return the rotation angle of a (3, 3) rotation in degrees."""
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))


def run_cli(argv: List[str]) -> Dict:
    """Run ``trianflow-vo`` in-process; return its summary with the stage table."""
    args = build_parser().parse_args(argv)
    summary, table = run(args)
    summary['stage_table'] = table
    return summary


def tum_pair_errors(out: Path, data: Path) -> Dict[str, Optional[float]]:
    """Relative-pose errors of the fr1_xyz pair against the derived ground truth."""
    path = data / 'tum_rgbd_pairs' / 'rgbd_dataset_freiburg1_xyz' / \
        'DERIVED_pair_gt_relative_pose.txt'
    rows = [line.split() for line in path.read_text().splitlines()
            if line.strip() and not line.startswith('#')]
    T_gt = np.array(rows, dtype=np.float64).reshape(4, 4)
    est = read_kitti(out / 'poses_kitti.txt').poses
    T_est = np.linalg.inv(est[0]) @ est[1]
    t_e, t_g = T_est[:3, 3], T_gt[:3, 3]
    cos = float(t_e @ t_g / max(np.linalg.norm(t_e) * np.linalg.norm(t_g), 1e-12))
    return {'rot_err_deg': angle_deg(T_est[:3, :3].T @ T_gt[:3, :3]),
            'dir_err_deg': float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))),
            'gt_rot_deg': angle_deg(T_gt[:3, :3]), 'gt_trans_m': float(np.linalg.norm(t_g))}


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark and print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA,
                        help='the shared data folder')
    parser.add_argument('--out', type=Path, default=None,
                        help='output folder of the runs (default: a temporary folder)')
    parser.add_argument('--quick', type=int, default=None,
                        help='at most N frames per KITTI run')
    parser.add_argument('--checkpoint', default=None,
                        help='learned flow + depth networks (default: classical DIS, no depth)')
    args = parser.parse_args(argv)
    kitti = args.data / 'kitti_odometry_seq06'
    tum = args.data / 'tum_rgbd_pairs'
    if not kitti.is_dir() or not tum.is_dir():
        parser.exit(2, f'data not found under {args.data} (kitti_odometry_seq06, '
                       'tum_rgbd_pairs); pass --data\n')
    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix='vo_bench_')
        out_root = Path(tmp.name)
    else:
        out_root = args.out
    extra = ['--quiet', '--overwrite']
    if args.checkpoint:
        extra += ['--flow', 'net', '--checkpoint', args.checkpoint]
    else:   # trianflow-vo would pick the shipped models/default.pth by default
        extra += ['--flow', 'dis']
    if args.quick:
        extra += ['--max-frames', str(args.quick)]
    provider = 'net' if args.checkpoint else 'dis'

    runs = {}
    for stride in (1, 3):
        name = f'kitti06_s{stride}'
        runs[name] = run_cli(['kitti', str(kitti), '--sequence', '06', '--stride', str(stride),
                              '--out', str(out_root / name)] + extra)
    tum_extra = [e for e in extra if e not in ('--max-frames', str(args.quick))]
    for seq in ('rgbd_dataset_freiburg1_xyz', 'rgbd_dataset_freiburg3_long_office_household'):
        name = 'tum_' + seq.split('_')[2]
        runs[name] = run_cli(['tum', str(tum / seq), '--out', str(out_root / name),
                              '--set', 'vo.resolution=native'] + tum_extra)
    pair = tum_pair_errors(out_root / 'tum_freiburg1', args.data)

    print(f'machine: {platform.processor() or platform.machine()}, provider: {provider}')
    head = f'{"run":<16} {"frames":>6} {"lost":>4} {"ATE m":>7} {"RPE m":>7} {"RPE deg":>8}'
    print(head + ''.join(f' {s:>7}' for s in STAGES) + '   (ms per frame, mean)')
    for name, s in runs.items():
        def fmt(v, spec):
            return format(v, spec) if v is not None else 'n/a'
        print(f'{name:<16} {s["frames"]:>6} {s["lost"]:>4} {fmt(s["ate"], ">7.3f")} '
              f'{fmt(s["rpe_trans"], ">7.3f")} {fmt(s["rpe_rot"], ">8.3f")}'
              + ''.join(f' {s["stage_table"][k]["mean_ms"]:>7.1f}' for k in STAGES))
    print(f'TUM fr1_xyz pair: rotation error {pair["rot_err_deg"]:.3f} deg '
          f'(GT rotation {pair["gt_rot_deg"]:.2f} deg), translation direction error '
          f'{pair["dir_err_deg"]:.2f} deg (GT |t| {pair["gt_trans_m"]:.4f} m)')
    result = {'provider': provider}
    for name, s in runs.items():
        result[name] = {k: s[k] for k in ('frames', 'lost', 'ate', 'rpe_trans', 'rpe_rot',
                                          'fps')}
        result[name]['stage_ms'] = {k: round(s['stage_table'][k]['mean_ms'], 1)
                                    for k in STAGES}
    result['tum_fr1_pair'] = pair
    if tmp is not None:
        tmp.cleanup()
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
