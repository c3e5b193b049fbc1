#!/usr/bin/env python3
"""
VO on every sequence of ``../shared/data`` with ground truth, and on the synthetic kinds.

Issue 12, item 4. Every sequence runs through every configuration in one process:

========== =================================================================================
config     what runs
========== =================================================================================
default    ``trianflow-vo`` without provider options: whatever the command picks by default
           (today: the shipped ``models/default.pth``, learned flow + depth); when it resolves
           to the same configuration as another config, that run is reused (``same_as``)
classical  ``--flow dis --depth none``: DIS flow, scale propagated by triangulation
classical_klt  ``--flow klt --depth none``: the sparse front end (Shi-Tomasi corners tracked
           by Lucas-Kanade started by a one-way DIS flow of preset fast), scale propagated by
           triangulation
classical_klt_motion  the same without any dense flow: pyramidal Lucas-Kanade started where
           the last motion puts the points (``vo.klt_prior=motion``, ``vo.klt_levels=3``,
           ``vo.klt_track_window=9``)
dis_depth  ``--flow dis --depth net --checkpoint default``: DIS flow, the learned depth for
           the scale (input size of the checkpoint)
dis_depth_hr  the same at 256x832 (the depth network is convolutional; DIS and the geometry
           get the classical mode's resolution)
learned    ``--flow net --depth net --checkpoint default``: learned flow + depth
baseline   the 30-line baseline of the issue (``bench/baseline_vo.py``: DIS at native
           resolution, ``findEssentialMat`` 0.1 px, unit steps); it undistorts its matches
           where the reader gives a distortion (``baseline_raw``: the same without, the
           issue's baseline exactly, run only there)
========== =================================================================================

The VO configurations run through ``trianflow_ros.vo.cli.run`` (the ``trianflow-vo`` code
path, with each reader's lens distortion passed to ``VisualOdometry.step``) with the CLI's
defaults (working resolution ``network``: 256x832 classical, the checkpoint's 64x192 with
weights); ``--set KEY=VALUE`` adds config overrides to every VO run.

Sequences (``--only``; ``real`` / ``synthetic`` select groups):

- ``kitti06_s1``, ``kitti06_s3``: KITTI odometry 06 frames 0-50 (grey ``image_0``, 1226x370),
  stride 1 (51 frames) and 3 (17 frames);
- ``vamr``: ``vamr_checkerboard`` (752x480, strong barrel distortion, one plane), stride 4,
  all 100 frames (0-396; 1.6 cm and 1.6 deg per step, 1.55 m path);
- ``tum_fr1_pair``: the two fr1_xyz frames (640x480, fr1 distortion); a Sim(3) ATE of two
  poses is 0 by construction, so ``rot_err_deg`` (relative rotation error) and
  ``dir_err_deg`` (translation direction error) are given instead, ``ate`` is None; one
  pair's figure is one draw, so both VO and baseline run with the seeds ``PAIR_SEEDS`` (0-7)
  and the medians are given (``*_by_seed``: every seed's figure);
- ``syn_forward``, ``syn_handheld``, ``syn_pure_rotation``, ``syn_highway``,
  ``syn_handheld30``, ``syn_turns``: ``trianflow_ros.data.synthetic`` kinds, seed 2000 (held
  out from the shipped weights' training seeds), 30 frames at 128x416 (10 Hz; handheld30 at
  30 Hz; turns: 115 frames, an urban drive through two 90-degree corners).
  Pure rotation has no translation: its ATE and RPE translation are None (no Sim(3) scale),
  its RPE rotation is computed without alignment (it does not depend on one).

Per run: ``ate`` (m, after Sim(3) alignment), ``rpe_trans`` (m, one processed frame, after the
Sim(3) scale), ``rpe_rot`` (deg), ``lost`` (LOST frames; baseline: pairs without E), ``fps``
(processed frames per second of wall time, the baseline over all its work), ``stage_ms`` (mean
ms per tracked frame of each VO stage), ``res`` (working resolution), ``frames``.

Output: a markdown table, then as the last line one JSON object::

    {"meta": {...}, "kitti06_s1": {"default": {"ate": ..., "rpe_trans": ..., "rpe_rot": ...,
     "lost": ..., "fps": ..., "frames": ..., "res": ..., "stage_ms": {...}}, "classical":
     {...}, ...}, "tum_fr1_pair": {"classical": {"rot_err_deg": ..., "dir_err_deg": ...}}, ...}

A run that fails records ``"error"``; a configuration that cannot run (no shipped weights)
records ``"skipped"``. Run from the repository root::

    .venv/bin/python bench/vo_real.py [--quick] [--only kitti06_s1,vamr]
        [--configs classical,baseline] [--out DIR] [--threads 1] [--set vo.num_matches=3000]
"""

import argparse
import contextlib
from dataclasses import dataclass
import io
import json
from pathlib import Path
import platform
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.baseline_vo import baseline_vo, evaluate  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402
from trianflow_ros.config import dump_yaml  # noqa: E402
from trianflow_ros.data.synthetic import make_sequence  # noqa: E402
from trianflow_ros.eval.odometry_metrics import evaluate_odometry  # noqa: E402
from trianflow_ros.eval.trajectory_io import read_kitti, Trajectory  # noqa: E402
from trianflow_ros.vo.cli import (build_parser, FrameSource, kitti_source,  # noqa: E402
                                  resolve_config, run, tum_source)
from trianflow_ros.vo.odometry import STAGES, working_size  # noqa: E402
from trianflow_ros.vo.providers import find_default_checkpoint  # noqa: E402

DEFAULT_DATA = REPO_ROOT.parent / 'shared' / 'data'
#: the options of the sparse front end without dense flow (``classical_klt_motion``).
KLT_MOTION = ['--set', 'vo.klt_prior=motion', '--set', 'vo.klt_levels=3', '--set',
              'vo.klt_track_window=9']
#: trianflow-vo options of each VO configuration (None: the baseline).
CONFIGS: Dict[str, Optional[List[str]]] = {
    'default': [],
    'classical': ['--flow', 'dis', '--depth', 'none'],
    'classical_klt': ['--flow', 'klt', '--depth', 'none'],
    'classical_klt_motion': ['--flow', 'klt', '--depth', 'none'] + KLT_MOTION,
    'dis_depth': ['--flow', 'dis', '--depth', 'net', '--checkpoint', 'default'],
    'dis_depth_hr': ['--flow', 'dis', '--depth', 'net', '--checkpoint', 'default', '--set',
                     'data.img_height=256', '--set', 'data.img_width=832'],
    'learned': ['--flow', 'net', '--depth', 'net', '--checkpoint', 'default'],
    'baseline': None,
    'baseline_raw': None,
}
#: the order the configurations are computed in (``default`` last, so it can reuse a run).
_RUN_ORDER = ('classical', 'classical_klt', 'classical_klt_motion', 'dis_depth', 'dis_depth_hr',
              'learned', 'default', 'baseline', 'baseline_raw')
SYNTHETIC_KINDS = ('forward', 'handheld', 'pure_rotation', 'highway', 'handheld30', 'turns')
#: frames of a synthetic kind when not 30: ``turns`` needs 115 for its first two corners.
SYNTHETIC_FRAMES = {'turns': 115}
SYNTHETIC_SEED = 2000


@dataclass
class Sequence:
    """
    One benchmark sequence.

    :ivar name: key in the JSON.
    :ivar label: row label in the table.
    :ivar load: returns the ``FrameSource`` (ground truth included).
    :ivar stride: frame stride.
    :ivar max_frames: frames processed (None: all).
    :ivar pair: two frames only: relative-pose errors instead of ATE (medians over
        :data:`PAIR_SEEDS`).
    :ivar group: 'real' or 'synthetic'.
    """

    name: str
    label: str
    load: Callable[[], FrameSource]
    stride: int = 1
    max_frames: Optional[int] = None
    pair: bool = False
    group: str = 'real'


#: Seeds of a two-frame sequence: one pair's figure is one draw of the matches and of RANSAC
#: (the baseline's direction error on the TUM pair ranges 5-10 deg over seeds, the classical
#: mode's 9-36 deg at native resolution), so both are run with these seeds and the medians
#: are reported, with every seed's figure beside them.
PAIR_SEEDS = tuple(range(8))


def synthetic_source(kind: str, frames: int, height: int, width: int,
                     seed: int = SYNTHETIC_SEED) -> FrameSource:
    """Render a synthetic sequence as a ``FrameSource`` (exact ground truth, no distortion)."""
    seq = make_sequence(kind, frames, height, width, seed=seed)
    images = seq.images_uint8()
    K = seq.K.double().numpy()
    rate = 30.0 if kind == 'handheld30' else 10.0
    stamps = np.arange(frames) / rate

    def load(i: int):
        return float(stamps[i]), images[i], K.copy()

    return FrameSource(f'synthetic {kind} {height}x{width} seed {seed}', frames, stamps,
                       np.arange(frames), seq.poses.double().numpy(), load)


def sequences(data: Path, quick: bool) -> List[Sequence]:
    """Return the benchmark sequences; with ``quick``, a few frames of each."""
    kitti = data / 'kitti_odometry_seq06'
    tum = data / 'tum_rgbd_pairs' / 'rgbd_dataset_freiburg1_xyz'
    vamr = data / 'vamr_checkerboard'

    def kitti_open():
        return kitti_source(argparse.Namespace(root=str(kitti), sequence='06', camera=0))

    def tum_open(path: Path):
        return lambda: tum_source(argparse.Namespace(path=str(path), distortion=None))

    n_syn, hw = (6, (64, 208)) if quick else (30, (128, 416))
    out = [
        Sequence('kitti06_s1', 'KITTI 06 s1', kitti_open, 1, 6 if quick else None),
        Sequence('kitti06_s3', 'KITTI 06 s3', kitti_open, 3, 4 if quick else None),
        Sequence('vamr', 'VAMR s4', tum_open(vamr), 4, 6 if quick else 100),
        Sequence('tum_fr1_pair', 'TUM fr1 pair', tum_open(tum), 1, None, pair=True),
    ]
    for kind in SYNTHETIC_KINDS:
        n = n_syn if quick else SYNTHETIC_FRAMES.get(kind, n_syn)
        out.append(Sequence(f'syn_{kind}', f'syn {kind}',
                            (lambda k=kind, n=n: synthetic_source(k, n, *hw)),
                            1, None, group='synthetic'))
    return out


def pair_errors(est: np.ndarray, gt: np.ndarray) -> Dict[str, float]:
    """Relative rotation error and translation direction error (deg) of a two-frame run."""
    T_est = np.linalg.inv(est[0]) @ est[1]
    T_gt = np.linalg.inv(gt[0]) @ gt[1]

    def angle(R):
        return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))

    t_e, t_g = T_est[:3, 3], T_gt[:3, 3]
    cos = float(t_e @ t_g / max(np.linalg.norm(t_e) * np.linalg.norm(t_g), 1e-12))
    return {'rot_err_deg': angle(T_est[:3, :3].T @ T_gt[:3, :3]),
            'dir_err_deg': float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))),
            'gt_rot_deg': angle(T_gt[:3, :3]), 'gt_trans_m': float(np.linalg.norm(t_g))}


def _pair_medians(runs: List[Dict[str, float]]) -> Dict:
    """Median rotation and direction errors of a pair's seeded runs, and every seed's."""
    out = dict(runs[0])
    for key in ('rot_err_deg', 'dir_err_deg'):
        values = [r[key] for r in runs]
        out[key] = float(np.median(values))
        out[key.replace('_deg', '_by_seed')] = [round(v, 3) for v in values]
    out['seeds'] = len(runs)
    return out


def _vo_args(config: str, out: Path, seq: Sequence, overrides: List[str]):
    argv = ['images', 'unused', '--intrinsics', 'unused', '--out', str(out), '--quiet',
            '--overwrite', '--no-depth-output', '--stride', str(seq.stride)]
    if seq.max_frames is not None:
        argv += ['--max-frames', str(seq.max_frames)]
    for text in overrides:
        argv += ['--set', text]
    return build_parser().parse_args(argv + CONFIGS[config])


def run_vo(config: str, source: FrameSource, seq: Sequence, out: Path,
           overrides: List[str]) -> Dict:
    """Run one VO configuration through ``trianflow_ros.vo.cli.run``; return its figures."""
    args = _vo_args(config, out, seq, overrides)
    args.open_source = lambda _args: source
    with contextlib.redirect_stderr(io.StringIO()):      # the CLI's notes; the bar stays
        summary, table = run(args)
    cfg = resolve_config(_vo_args(config, out, seq, overrides), log=lambda _text: None)
    h, w = working_size(cfg, source.frame(0)[1].shape[:2])
    res = f'{h}x{w}'
    result = {k: summary[k] for k in ('frames', 'lost', 'ate', 'rpe_trans', 'rpe_rot', 'fps')}
    result['res'] = res
    result['methods'] = summary['methods']
    result['stage_ms'] = {k: round(table[k]['mean_ms'], 1) for k in STAGES}
    idx = list(range(0, source.count, seq.stride))[:seq.max_frames]
    est = read_kitti(out / 'poses_kitti.txt').poses
    if seq.pair:
        result.update(pair_errors(est, source.gt[idx]))
        result['ate'] = None
        runs = [result]
        for seed in PAIR_SEEDS[1:]:
            seeded = overrides + [f'geometry.ransac.seed={seed}']
            args = _vo_args(config, out, seq, seeded)
            args.open_source = lambda _args: source
            with contextlib.redirect_stderr(io.StringIO()):
                run(args)
            runs.append(pair_errors(read_kitti(out / 'poses_kitti.txt').poses, source.gt[idx]))
        result.update(_pair_medians(runs))
    elif source.gt is not None and _no_translation(source.gt[idx]):
        result.update(rotation_only(est, source.gt[idx], source.stamps[idx]))
    return result


def _no_translation(gt: np.ndarray) -> bool:
    """Return True when the ground-truth camera centres do not move (pure rotation)."""
    return float(np.ptp(gt[:, :3, 3], axis=0).max()) < 1e-9


def rotation_only(est: np.ndarray, gt: np.ndarray, stamps: np.ndarray) -> Dict:
    """
    Figures of a run whose ground truth does not translate (pure rotation).

    ATE and RPE translation are undefined there (no Sim(3) scale to fit): None, with a note;
    the RPE rotation does not depend on the alignment and is computed without one.
    """
    gt = np.linalg.inv(gt[0]) @ gt
    res = evaluate_odometry(Trajectory(gt, stamps, 'ground truth'),
                            Trajectory(est, stamps, 'estimate'), align='none')
    return {'ate': None, 'rpe_trans': None, 'rpe_rot': res.rpe_rot,
            'note': 'no translation in the ground truth: ATE undefined, RPE rotation unaligned'}


def run_baseline(source: FrameSource, seq: Sequence, undistort: bool) -> Dict:
    """Run the 30-line baseline at the native resolution; return its figures."""
    idx = list(range(0, source.count, seq.stride))[:seq.max_frames]
    K = source.frame(idx[0])[2]
    res = baseline_vo((source.frame(i)[1] for i in idx), K,
                      source.distortion if undistort else None)
    if seq.pair:
        runs = [pair_errors(res.poses, source.gt[idx])] + [
            pair_errors(baseline_vo((source.frame(i)[1] for i in idx), K,
                                    source.distortion if undistort else None, seed=seed).poses,
                        source.gt[idx]) for seed in PAIR_SEEDS[1:]]
    h, w = source.frame(idx[0])[1].shape[:2]
    result = {'frames': len(idx), 'lost': res.lost, 'fps': len(idx) / res.seconds,
              'res': f'{h}x{w} native', 'ate': None, 'rpe_trans': None, 'rpe_rot': None,
              'undistorted': bool(undistort and not source.distortion.is_identity)}
    if seq.pair:
        result.update(_pair_medians(runs))
    elif source.gt is not None and _no_translation(source.gt[idx]):
        result.update(rotation_only(res.poses, source.gt[idx], source.stamps[idx]))
    elif source.gt is not None:
        try:
            figures = evaluate(res.poses, source.gt[idx], source.stamps[idx])
            result.update({k: figures[k] for k in ('ate', 'rpe_trans', 'rpe_rot')})
        except ValueError as e:                     # e.g. no translation (pure rotation)
            result['note'] = str(e)
    return result


def _vo_key(config: str, seq: Sequence, out: Path, overrides: List[str]) -> str:
    """Return the resolved configuration of a VO config (to find 'default' = another one)."""
    cfg = resolve_config(_vo_args(config, out, seq, overrides), log=lambda _text: None)
    cfg.vo.checkpoint = str(cfg.vo.checkpoint)
    return dump_yaml(cfg)


def _fmt(value, spec: str) -> str:
    return 'n/a' if value is None else format(value, spec)


def markdown_table(results: Dict[str, Dict[str, Dict]], labels: Dict[str, str]) -> str:
    """Format the figures as a markdown table (one row per sequence and configuration)."""
    stage_names = ('flow', 'depth', 'select', 'solver', 'scale', 'total')
    head = ('| sequence | config | res | frames | lost | ATE m | RPE m | RPE deg | fps | '
            + ' | '.join(f'{s} ms' for s in stage_names) + ' |')
    lines = [head, '|' + '---|' * (head.count('|') - 1)]
    for name, runs in results.items():
        for config, r in runs.items():
            if 'skipped' in r or 'error' in r:
                lines.append(f'| {labels[name]} | {config} | ' + (
                    f'skipped: {r["skipped"]}' if 'skipped' in r else f'error: {r["error"]}')
                    + ' |' * 14)
                continue
            ate = _fmt(r.get('ate'), '.3f')
            if 'rot_err_deg' in r:
                ate = f'rot {r["rot_err_deg"]:.2f} deg, dir {r["dir_err_deg"]:.1f} deg'
            same = f' (= {r["same_as"]})' if r.get('same_as') else ''
            stages = r.get('stage_ms', {})
            lines.append(
                f'| {labels[name]} | {config}{same} | {r["res"]} | {r["frames"]} | '
                f'{r["lost"]} | {ate} | {_fmt(r.get("rpe_trans"), ".3f")} | '
                f'{_fmt(r.get("rpe_rot"), ".3f")} | {_fmt(r.get("fps"), ".1f")} | '
                + ' | '.join(_fmt(stages.get(s), '.0f') for s in stage_names) + ' |')
    return '\n'.join(lines)


def _select(all_seqs: List[Sequence], only: Optional[str]) -> List[Sequence]:
    if not only:
        return all_seqs
    names = set()
    for word in only.split(','):
        word = word.strip()
        group = [s.name for s in all_seqs if s.group == word]
        if group:
            names.update(group)
        elif word in {s.name for s in all_seqs}:
            names.add(word)
        else:
            raise ValueError(f'unknown sequence {word!r}; choose from '
                             f'{", ".join(s.name for s in all_seqs)}, real, synthetic')
    return [s for s in all_seqs if s.name in names]


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark; print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA, help='the shared data folder')
    parser.add_argument('--out', type=Path, default=None,
                        help='folder for the runs (trajectories, frames.csv, plots); default: '
                             'a temporary folder, removed afterwards')
    parser.add_argument('--quick', action='store_true',
                        help='a few frames per sequence (smoke test), synthetic at 64x208')
    parser.add_argument('--only', default=None,
                        help='comma-separated sequences (or the groups real, synthetic)')
    parser.add_argument('--configs', default=','.join(CONFIGS),
                        help=f'comma-separated configurations (default: {",".join(CONFIGS)})')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch intra-op and OpenCV threads (default 1; 0 = leave as is)')
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        metavar='KEY=VALUE', help='config override for every VO run')
    parser.add_argument('--progress', action=argparse.BooleanOptionalAction, default=True,
                        help='progress bar on standard error')
    args = parser.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(',') if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.exit(2, f'vo_real: unknown config(s) {unknown}; choose from {list(CONFIGS)}\n')
    try:
        seqs = _select(sequences(args.data, args.quick), args.only)
    except ValueError as e:
        parser.exit(2, f'vo_real: {e}\n')
    missing = [p for p in ('kitti_odometry_seq06', 'vamr_checkerboard', 'tum_rgbd_pairs')
               if any(s.group == 'real' for s in seqs) and not (args.data / p).is_dir()]
    if missing:
        parser.exit(2, f'vo_real: data not found under {args.data}: {missing}; pass --data\n')
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix='vo_real_')
        out_root = Path(tmp.name)
    else:
        out_root = args.out
    weights = find_default_checkpoint()
    t_start = time.perf_counter()
    results: Dict[str, Dict[str, Dict]] = {}
    order = [c for c in _RUN_ORDER if c in configs]
    bar = tqdm(total=len(seqs) * len(order), desc='vo_real', unit='run',
               disable=not args.progress, file=sys.stderr)
    for seq in seqs:
        source = seq.load()
        runs: Dict[str, Dict] = {}
        keys: Dict[str, str] = {}
        for config in order:
            bar.set_postfix_str(f'{seq.name} {config}')
            out = out_root / seq.name / config
            try:
                if config == 'baseline_raw' and source.distortion.is_identity:
                    runs[config] = {'skipped': 'no lens distortion (= baseline)'}
                elif config.startswith('baseline'):
                    runs[config] = run_baseline(source, seq, config == 'baseline')
                elif weights is None and 'default' in CONFIGS[config]:
                    runs[config] = {'skipped': 'no shipped weights models/default.pth'}
                else:
                    key = _vo_key(config, seq, out, args.overrides)
                    same = next((c for c, k in keys.items() if k == key), None)
                    if same is not None:
                        runs[config] = dict(runs[same], same_as=same)
                    else:
                        runs[config] = run_vo(config, source, seq, out, args.overrides)
                        keys[config] = key
            except Exception as e:  # noqa: B902 - a bench reports a failed run and goes on
                runs[config] = {'error': f'{type(e).__name__}: {e}'.splitlines()[0][:200]}
            bar.update(1)
        results[seq.name] = {c: runs[c] for c in configs if c in runs
                             and not (c == 'baseline_raw' and 'skipped' in runs[c])}
    bar.close()
    elapsed = time.perf_counter() - t_start
    labels = {s.name: s.label for s in seqs}
    print(markdown_table(results, labels))
    meta = {'seconds': round(elapsed, 1), 'threads': args.threads, 'quick': args.quick,
            'machine': platform.processor() or platform.machine(),
            'weights': str(weights) if weights else None, 'overrides': args.overrides,
            'synthetic_seed': SYNTHETIC_SEED}
    print(f'{len(seqs)} sequences x {len(configs)} configs in {elapsed:.0f} s '
          f'({args.threads} thread(s))')
    if tmp is not None:
        tmp.cleanup()
    print(json.dumps({'meta': meta, **_rounded(results)}))
    return 0


def _rounded(value):
    """Round floats in nested dicts for the JSON line (6 significant digits)."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, float):
        return float(f'{value:.6g}')
    return value


if __name__ == '__main__':
    raise SystemExit(main())
