"""
``trianflow-vo``: visual odometry over a KITTI, TUM RGB-D or image-folder sequence.

Writes the trajectory, depth maps, a plot and (with ground truth) metrics.

Examples::

    trianflow-vo kitti ../shared/data/kitti_odometry_seq06 --sequence 06 --out out/06
    trianflow-vo kitti ROOT --sequence 06 --stride 3 --out out/06_s3 --profile
    trianflow-vo tum ROOT/rgbd_dataset_freiburg1_xyz --out out/fr1 --set vo.resolution=native
    trianflow-vo images DIR --intrinsics DIR/intrinsics.txt --rate 10 --out out/mine
    trianflow-vo images DIR --intrinsics K.txt --distortion "plumb_bob -0.29 0.08" --out out/d
    trianflow-vo tum ../shared/data/vamr_checkerboard --flow dis --out out/vamr
    trianflow-vo kitti ROOT --sequence 09 --config config/odo.yaml --flow net \
        --checkpoint kitti_odo.pth --out out/09       # an original TrianFlow checkpoint
    trianflow-vo kitti ROOT --sequence 09 --flow net --checkpoint default --out out/09d

Weights: ``--checkpoint default`` is the shipped ``models/default.pth``. A checkpoint written by
``trianflow-train`` stores its configuration; the network variant, ``data.img_height`` /
``img_width``, ``data.bgr`` and the depth range are taken from it (logged), and only
``--set data.img_height=H`` / ``--set data.img_width=W`` override its input size. The original
checkpoints store none: give their layout, ``--config config/odo.yaml`` (256x832, BGR).

Lens distortion (undistorted on the matches inside the VO, never on the images; the model
used is logged): ``tum`` takes the TUM documentation's coefficients of fr1 / fr2 (fr3: none),
or a folder's own ``intrinsics.txt`` + ``distortion.txt`` / ``D.txt`` (any folder in the TUM
layout, e.g. ``../shared/data/vamr_checkerboard``); ``images`` reads ``distortion.txt`` /
``D.txt`` beside the intrinsics file (then in the image folder); ``--distortion`` (``tum``,
``images``) overrides both with a file or the text ``"[model] c1 c2 ..."`` (model plumb_bob,
rational_polynomial, equidistant; numbers alone = plumb_bob; ``none`` = pinhole). KITTI
images are rectified (no distortion).

Written into ``--out``: ``poses_kitti.txt`` (12 numbers a line, ``T_world_cam`` of every
processed frame, the first is the identity), ``poses_tum.txt`` (stamp tx ty tz qx qy qz qw;
stamps from the dataset, else file-name numbers or frame index / ``--rate``), ``depth/NNNNNN.png``
(16 bits, value = depth * 256, 0 = unknown; NNNNNN = the dataset's frame number) and ``.npy``
(float32, odometry scale, working resolution), ``frames.csv`` (per-frame state, method,
inliers, stage times), ``config.yaml`` (the resolved configuration), and where ground truth
exists ``trajectory.png`` (after Sim(3) alignment) and ``metrics.json`` (ATE after Sim(3), RPE
over one processed frame). The last printed line is one JSON object.
"""

import argparse
import csv
import json
from pathlib import Path
import re
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from trianflow_ros.config import add_config_arguments, Config, config_from_args, ConfigError
from trianflow_ros.config import dump_yaml, parse_override
from trianflow_ros.data.camera_files import (describe_distortion, find_distortion_file,
                                             parse_distortion_option, read_distortion_file,
                                             read_intrinsics_file)
from trianflow_ros.data.kitti_odometry import KittiOdometrySequence
from trianflow_ros.data.sample import DatasetError, load_image
from trianflow_ros.data.tum import TumRgbdSequence
from trianflow_ros.eval.odometry_metrics import evaluate_odometry
from trianflow_ros.eval.plots import plot_trajectories
from trianflow_ros.eval.trajectory_io import Trajectory, write_kitti, write_tum
from trianflow_ros.geometry.distortion import Distortion
from trianflow_ros.nets.checkpoint import CheckpointError
from trianflow_ros.vo import factory
from trianflow_ros.vo.odometry import STAGES, VisualOdometry
from trianflow_ros.vo.providers import find_default_checkpoint
from trianflow_ros.vo.types import FrameResult, TrackingState

PROG = 'trianflow-vo'
#: Files of a run; an existing one makes the command refuse unless --overwrite.
RESULT_FILES = ('poses_kitti.txt', 'poses_tum.txt', 'trajectory.png', 'metrics.json',
                'frames.csv', 'config.yaml')
_IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.ppm', '.pgm', '.bmp')
#: Depth PNG encoding: value = depth * DEPTH_PNG_SCALE (KITTI convention), 0 = unknown.
DEPTH_PNG_SCALE = 256.0


class CliError(Exception):
    """A user error with a message that names the input and the fix (exit status 2)."""


class FrameSource:
    """
    Frames of one input for the odometry.

    :ivar name: label for titles.
    :ivar count: number of frames available.
    :ivar stamps: (count,) float64 stamps in seconds.
    :ivar numbers: (count,) int frame numbers (file names of the depth outputs).
    :ivar gt: (count, 4, 4) ground-truth ``T_world_cam`` or None.
    :ivar distortion: the lens distortion of the images
        (:class:`~trianflow_ros.geometry.distortion.Distortion`, model 'none' for rectified
        or pinhole images), passed to ``VisualOdometry.step``.
    :ivar camera: where K and the distortion came from (for the log).
    """

    def __init__(self, name: str, count: int, stamps: np.ndarray, numbers: np.ndarray,
                 gt: Optional[np.ndarray], load, distortion: Optional[Distortion] = None,
                 camera: str = ''):
        self.name = name
        self.count = count
        self.stamps = np.asarray(stamps, dtype=np.float64)
        self.numbers = np.asarray(numbers, dtype=np.int64)
        self.gt = gt
        self._load = load
        self.distortion = distortion if distortion is not None else Distortion()
        self.camera = camera

    def frame(self, i: int):
        """Return (stamp, (H, W, 3) uint8 RGB image, K (3, 3)) of frame i."""
        return self._load(i)


def kitti_source(args) -> FrameSource:
    """Open a KITTI odometry sequence (camera 2 if present, else 0, unless --camera)."""
    camera = args.camera
    if camera is None:
        base = Path(args.root)
        has2 = any((d / 'sequences' / f'{int(args.sequence):02d}' / 'image_2').is_dir()
                   for d in (base, base / 'dataset'))
        camera = 2 if has2 else 0
    seq = KittiOdometrySequence(args.root, args.sequence, camera=camera)
    return FrameSource(f'KITTI {seq.name} (image_{camera})', len(seq), seq.times,
                       seq.frame_numbers, seq.camera_poses, seq.frame, Distortion(),
                       'calib.txt (rectified images)')


def tum_source(args) -> FrameSource:
    """
    Open a TUM RGB-D sequence folder (RGB frames; ground truth if present).

    Also any folder in the TUM layout (rgb.txt, optional groundtruth.txt) with its own
    intrinsics.txt (+ distortion.txt / D.txt), such as ``vamr_checkerboard``.
    """
    distortion = None
    if getattr(args, 'distortion', None) is not None:
        distortion = parse_distortion_option(args.distortion)
    seq = TumRgbdSequence(args.path, use_depth=False, distortion=distortion)
    if len(seq) == 0:
        raise CliError(f'{args.path}: no RGB frames (with ground truth) listed in rgb.txt')
    return FrameSource(f'TUM {seq.name}', len(seq), seq.stamps, np.arange(len(seq)),
                       seq.poses, seq.frame, seq.distortion, seq.camera_source)


def images_source(args) -> FrameSource:
    """
    Open a folder of images (natural name order) with an intrinsics file.

    The distortion is ``--distortion`` (a file or text), else ``distortion.txt`` / ``D.txt``
    beside the intrinsics file, else in the image folder, else none.
    """
    root = Path(args.dir)
    if not root.is_dir():
        raise CliError(f'image folder not found: {root}')
    K = read_intrinsics_file(args.intrinsics)
    if args.distortion is not None:
        distortion = parse_distortion_option(args.distortion)
        camera = f'{args.intrinsics}; --distortion {args.distortion}'
    else:
        found = find_distortion_file(Path(args.intrinsics).parent) or find_distortion_file(root)
        distortion = read_distortion_file(found) if found is not None else Distortion()
        camera = f'{args.intrinsics}' + (f' + {found}' if found is not None else '')

    def key(p: Path):
        return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', p.name)]

    paths = sorted((p for p in root.iterdir()
                    if p.suffix.lower() in _IMAGE_EXTENSIONS and p.is_file()), key=key)
    if not paths:
        raise CliError(f'no images ({", ".join(_IMAGE_EXTENSIONS)}) in {root}')
    try:
        stamps = np.array([float(p.stem) for p in paths])
    except ValueError:
        stamps = np.arange(len(paths)) / args.rate
    numbers = []
    for i, p in enumerate(paths):
        digits = re.findall(r'\d+', p.stem)
        numbers.append(int(digits[-1]) if digits else i)
    if len(set(numbers)) != len(numbers):
        numbers = list(range(len(paths)))

    def load(i: int):
        return float(stamps[i]), load_image(paths[i]), K.copy()

    return FrameSource(root.name, len(paths), stamps, np.array(numbers), None, load,
                       distortion, camera)


def _common_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument('--out', required=True, help='output folder (created)')
    p.add_argument('--overwrite', action='store_true', help='replace existing result files')
    p.add_argument('--stride', type=int, default=1,
                   help='use every N-th frame (the paper tests stride 3 on KITTI)')
    p.add_argument('--max-frames', type=int, default=None, help='process at most N frames')
    p.add_argument('--flow', choices=('dis', 'klt', 'net'), default=None,
                   help='flow provider: dis (OpenCV dense flow, no weights; the default, also '
                        'with --checkpoint), klt (sparse: corners tracked by Lucas-Kanade, no '
                        'weights; fastest with --no-depth-output) or net (needs --checkpoint)')
    p.add_argument('--depth', choices=('none', 'net'), default=None,
                   help='depth provider: none (scale propagated by triangulation) or net; '
                        'default: net when --checkpoint is given, else none')
    p.add_argument('--checkpoint', default=None,
                   help="checkpoint of the learned networks: a .pth file, or 'default' (the "
                        'shipped models/default.pth); a checkpoint with a stored config sets '
                        'the network variant, input size and channel order (--set '
                        'data.img_height/img_width still win); original ones (kitti_odo.pth) '
                        'need --config config/odo.yaml')
    p.add_argument('--device', default=None, help='torch device (auto, cpu, cuda, cuda:N)')
    p.add_argument('--profile', action='store_true',
                   help='print the per-stage time table (flow, depth, select, solver, scale)')
    p.add_argument('--no-depth-output', action='store_true', help='do not write depth maps')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    add_config_arguments(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``trianflow-vo``."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    common = _common_options()
    k = sub.add_parser('kitti', parents=[common], help='a KITTI odometry sequence')
    k.add_argument('root', help='folder holding dataset/sequences (or sequences)')
    k.add_argument('--sequence', required=True, help='sequence number, e.g. 06')
    k.add_argument('--camera', type=int, choices=(0, 2), default=None,
                   help='0 = image_0 (grey), 2 = image_2 (colour); default 2 if present')
    k.set_defaults(open_source=kitti_source)
    t = sub.add_parser('tum', parents=[common],
                       help='a TUM RGB-D sequence folder, or any folder in its layout')
    t.add_argument('path', help='the sequence folder (with rgb.txt; groundtruth.txt, '
                                'intrinsics.txt and distortion.txt / D.txt when present)')
    t.add_argument('--distortion', default=None, metavar='FILE|TEXT',
                   help='lens distortion overriding that of the sequence: a file or '
                        '"[model] c1 c2 ..." (plumb_bob, rational_polynomial, equidistant; '
                        'numbers alone = plumb_bob); "none" for a pinhole camera')
    t.set_defaults(open_source=tum_source)
    m = sub.add_parser('images', parents=[common], help='a folder of images')
    m.add_argument('dir', help='the image folder')
    m.add_argument('--intrinsics', required=True,
                   help="file with 'fx fy cx cy' or the 9 numbers of K (native size)")
    m.add_argument('--distortion', default=None, metavar='FILE|TEXT',
                   help='lens distortion: a file or "[model] c1 c2 ..." (plumb_bob, '
                        'rational_polynomial, equidistant; numbers alone = plumb_bob); '
                        'default: distortion.txt / D.txt beside the intrinsics file, then in '
                        'the image folder, else none')
    m.add_argument('--rate', type=float, default=10.0,
                   help='frame rate for stamps when file names are not numbers (Hz)')
    m.set_defaults(open_source=images_source)
    return parser


def _log(text: str) -> None:
    """Print a note of the command to standard error."""
    print(f'{PROG}: {text}', file=sys.stderr)


def resolve_config(args, log=None) -> Config:
    """
    Apply the command-line options onto the resolved configuration.

    With learned networks (``--flow net`` / ``--depth net``) the checkpoint is resolved
    (``default`` = ``models/default.pth``) and its network-defined settings are adopted
    (:func:`~trianflow_ros.vo.providers.network_config`): a checkpoint with a stored
    configuration sets ``data.img_height`` / ``img_width`` / ``bgr`` and the network variant;
    only ``--set data.img_height=...`` / ``--set data.img_width=...`` keep the user's input
    size. Without a stored configuration (the original checkpoints) ``--config`` / ``--set``
    decide, e.g. ``--config config/odo.yaml`` for ``kitti_odo.pth``.

    :param args: the parsed arguments.
    :param log: where the notes go (one string per call); default: standard error.
    :raises CliError: learned networks without a checkpoint.
    :raises CheckpointError: an unreadable checkpoint, or ``default`` is not installed.
    """
    if log is None:
        log = _log
    cfg = config_from_args(args)
    if not (args.checkpoint or args.flow or args.depth or cfg.vo.checkpoint
            or 'net' in (cfg.vo.flow_provider, cfg.vo.depth_provider)):
        # the classical pipeline is the default: it wins bench/vo_real.py on the real
        # sequences (docs/BENCHMARKS.md); the shipped weights are one option away
        if find_default_checkpoint() is not None:
            log('classical pipeline (DIS flow, scale by triangulation): it beats the shipped '
                'small weights on the real sequences; --checkpoint default uses them')
    if args.device:
        cfg.vo.device = args.device
    # the rule of trianflow_ros.vo.factory; flags choose the providers (dis / none unless
    # given; --checkpoint alone adds the depth network)
    weights, _ = factory.pick_weights(args.checkpoint or '', cfg)
    flow = args.flow or cfg.vo.flow_provider
    depth = args.depth or ('net' if args.checkpoint else cfg.vo.depth_provider)
    explicit = [parse_override(text)[0] for text in args.overrides]
    try:
        return factory.odometry_config(cfg, weights, flow, depth, explicit, log)
    except factory.MissingWeightsError:
        raise CliError('--flow net / --depth net need --checkpoint PATH (or --checkpoint '
                       'default: models/default.pth when installed); use the classical '
                       'flow (--flow dis) without one') from None


def _check_out(out: Path, overwrite: bool, depth: bool) -> None:
    existing = [out / f for f in RESULT_FILES if (out / f).exists()]
    if depth and (out / 'depth').is_dir() and any((out / 'depth').iterdir()):
        existing.append(out / 'depth')
    if existing and not overwrite:
        raise CliError(f'{out} already holds results ({", ".join(p.name for p in existing)}); '
                       'pass --overwrite or choose another --out')


def save_depth(folder: Path, number: int, depth: np.ndarray) -> None:
    """Write one depth map as 16-bit PNG (depth * 256, 0 = unknown) and float32 .npy."""
    folder.mkdir(parents=True, exist_ok=True)
    d = np.nan_to_num(depth.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    png = np.clip(np.round(d * DEPTH_PNG_SCALE), 0, 65535).astype(np.uint16)
    if not cv2.imwrite(str(folder / f'{number:06d}.png'), png):
        raise CliError(f'cannot write {folder / f"{number:06d}.png"}')
    np.save(folder / f'{number:06d}.npy', d)


def stage_table(results: Sequence[FrameResult]) -> Dict[str, Dict[str, float]]:
    """Return mean and median milliseconds per stage over the tracked frames (not the first)."""
    rows = [r.timings for r in results[1:]] or [r.timings for r in results]
    table = {}
    for stage in STAGES:
        v = np.array([t.get(stage, 0.0) for t in rows])
        table[stage] = {'mean_ms': float(v.mean()), 'median_ms': float(np.median(v))}
    return table


def format_stage_table(table: Dict[str, Dict[str, float]]) -> str:
    """Format :func:`stage_table` as text."""
    lines = [f'{"stage":<8} {"mean ms":>9} {"median ms":>10}']
    for stage, v in table.items():
        lines.append(f'{stage:<8} {v["mean_ms"]:>9.1f} {v["median_ms"]:>10.1f}')
    return '\n'.join(lines)


def _write_frames_csv(path: Path, results: Sequence[FrameResult], numbers) -> None:
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['index', 'frame', 'stamp', 'state', 'method', 'motion', 'matches',
                    'inliers', 'scale', 'scale_source', 'reference']
                   + [f'{s}_ms' for s in STAGES] + ['message'])
        for r, n in zip(results, numbers):
            w.writerow([r.index, int(n), f'{r.stamp:.6f}', r.state.name, r.method,
                        r.motion.name if r.motion is not None else '', r.num_matches,
                        r.num_inliers, f'{r.scale:.6g}', r.scale_source, r.reference_index]
                       + [f'{r.timings.get(s, 0.0):.2f}' for s in STAGES] + [r.message])


def run(args) -> Tuple[Dict, Dict[str, Dict[str, float]]]:
    """Run the odometry for parsed arguments; return the summary and the stage time table."""
    if args.stride < 1:
        raise CliError(f'--stride must be >= 1, got {args.stride}')
    if args.max_frames is not None and args.max_frames < 1:
        raise CliError(f'--max-frames must be >= 1, got {args.max_frames}')
    cfg = resolve_config(args)
    out = Path(args.out)
    _check_out(out, args.overwrite, not args.no_depth_output)
    source = args.open_source(args)
    _log(f'lens distortion: {describe_distortion(source.distortion)}'
         + (f' ({source.camera})' if source.camera else ''))
    indices = list(range(0, source.count, args.stride))
    if args.max_frames is not None:
        indices = indices[:args.max_frames]
    vo: VisualOdometry = factory.build(cfg)
    vo.output_depth = not args.no_depth_output      # no dense map only the output would read
    out.mkdir(parents=True, exist_ok=True)
    (out / 'config.yaml').write_text(dump_yaml(cfg))
    results: List[FrameResult] = []
    t0 = time.perf_counter()
    with vo:
        for i in tqdm(indices, desc=PROG, unit='frame', disable=args.quiet or None,
                      file=sys.stderr):
            stamp, image, K = source.frame(i)
            r = vo.step(stamp, image, K, distortion=source.distortion)
            results.append(r)
            if not args.no_depth_output and r.depth is not None:
                save_depth(out / 'depth', int(source.numbers[i]), r.depth)
    elapsed = time.perf_counter() - t0

    table = stage_table(results)
    poses = np.stack([r.T_world_cam for r in results])
    stamps = source.stamps[indices]
    est = Trajectory(poses, stamps, 'poses_tum.txt')
    write_kitti(out / 'poses_kitti.txt', est, overwrite=True)
    write_tum(out / 'poses_tum.txt', est, overwrite=True)
    _write_frames_csv(out / 'frames.csv', results, source.numbers[indices])
    summary = {'frames': len(results), 'fps': len(results) / elapsed if elapsed > 0 else None,
               'ate': None, 'rpe_trans': None, 'rpe_rot': None,
               'lost': int(sum(r.state == TrackingState.LOST for r in results)),
               'methods': {m: sum(r.method == m for r in results)
                           for m in sorted({r.method for r in results})},
               'stage_ms': {k: round(v['mean_ms'], 2) for k, v in table.items()},
               'distortion': {'model': source.distortion.model,
                              'coeffs': list(source.distortion.coeffs)},
               'out': str(out)}
    if source.gt is not None:
        gt_poses = source.gt[indices]
        gt_poses = np.linalg.inv(gt_poses[0]) @ gt_poses         # odometry frame = first camera
        gt = Trajectory(gt_poses, stamps, 'ground truth')
        metrics: Dict = {'align': 'sim3'}
        try:
            res = evaluate_odometry(gt, Trajectory(poses, stamps, 'estimate'), align='sim3')
            metrics.update(res.as_dict())
            summary.update(ate=res.ate_sim3, rpe_trans=res.rpe_trans, rpe_rot=res.rpe_rot)
            plot_trajectories(out / 'trajectory.png', gt, {PROG: res.aligned_est},
                              title=f'{source.name}, stride {args.stride} (Sim(3) aligned)')
        except ValueError as e:
            metrics['error'] = str(e)
            plot_trajectories(out / 'trajectory.png', gt, {PROG: est},
                              title=f'{source.name}, stride {args.stride} (not aligned: {e})')
        (out / 'metrics.json').write_text(json.dumps(metrics, indent=2) + '\n')
    else:
        plot_trajectories(out / 'trajectory.png', None, {PROG: est},
                          title=f'{source.name}, stride {args.stride}')
    return summary, table


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``trianflow-vo``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        summary, table = run(args)
    except (CliError, ConfigError, DatasetError, CheckpointError, FileNotFoundError,
            ValueError) as e:
        parser.exit(2, f'{PROG}: error: {e}\n')
    if args.profile:
        print(format_stage_table(table))
    print(f'{summary["frames"]} frames, {summary["lost"]} lost, '
          f'{summary["fps"] or 0:.2f} frames/s, ATE(Sim3) {summary["ate"]}, '
          f'RPE {summary["rpe_trans"]} / {summary["rpe_rot"]} deg -> {summary["out"]}')
    print(json.dumps(summary))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
