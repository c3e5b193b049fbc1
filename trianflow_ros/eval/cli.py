"""
``trianflow-eval``: score saved depth and flow predictions with the KITTI / NYUv2 protocols.

Thin command line over :mod:`trianflow_ros.eval.depth_metrics` and
:mod:`trianflow_ros.eval.flow_metrics`: it loads and pairs files, calls the evaluators, prints a
table and, as its last line, one JSON object with the figures.

Each subcommand is one ``add_<name>_parser(subparsers)`` function listed in :data:`SUBCOMMANDS`
that registers its arguments and its ``run`` function; a new subcommand (``odometry``) is one
more such function appended there.
"""

import argparse
from dataclasses import dataclass
import json
from pathlib import Path
import sys
import textwrap
from typing import Callable, Dict, List, Optional, Sequence, Tuple
import zipfile

import cv2
import numpy as np

from trianflow_ros.eval.depth_metrics import DepthEvaluator, KITTI_COLUMNS, NYU_COLUMNS
from trianflow_ros.eval.flow_metrics import FlowEvaluator
from trianflow_ros.eval.kitti_flow_io import read_depth_png, read_kitti_flow
from trianflow_ros.eval.odometry_metrics import evaluate_odometry, KITTI_SEGMENT_LENGTHS
from trianflow_ros.eval.odometry_metrics import KITTI_STEP
from trianflow_ros.eval.trajectory_io import MAX_DT, read_trajectory, TrajectoryFormatError

PROG = 'trianflow-eval'

NOTE_PREDICTIONS = (
    'This command scores predictions saved as files; producing them by running the networks '
    '(a --checkpoint option) is not part of it yet.')

#: Keys tried, in order, for the array inside an .npz (else its only array is used).
NPZ_KEYS = ('data', 'gt_depths', 'pred_depths', 'depths', 'depth', 'pred', 'disp')


def _paragraphs(*texts: str) -> str:
    """Fill each paragraph to 79 columns (for RawDescriptionHelpFormatter)."""
    return '\n\n'.join(textwrap.fill(t, 79) for t in texts)


class EvalInputError(ValueError):
    """Bad evaluation input (missing or unmatched file, wrong array shape); names the file."""


# --------------------------------------------------------------------------------------------
# Inputs: items of a folder or an .npz, loaded lazily, paired by stem or by sorted order
# --------------------------------------------------------------------------------------------

@dataclass
class Item:
    """
    One map of an input: a file in a folder or an entry of an .npz.

    :param name: file stem used for matching; None for .npz entries (matched by order).
    :param origin: human-readable location for messages ('dir/000001.png', 'x.npz[3]').
    :param load: returns the array.
    """

    name: Optional[str]
    origin: str
    load: Callable[[], np.ndarray]


def _npz_array(path: Path, allow_pickle: bool = False) -> np.ndarray:
    try:
        with np.load(path) as npz:
            keys = list(npz.keys())
            key = next((k for k in NPZ_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise EvalInputError(f'{path}: no array named one of {", ".join(NPZ_KEYS)} '
                                     f'among {keys}')
            try:
                return npz[key]
            except ValueError:
                pass
        # Object arrays (one (H, W) array per image of varying size, as in the common
        # gt_depths.npz) are stored with pickle, which can run code: opt-in only.
        if not allow_pickle:
            raise EvalInputError(f'{path}: holds object arrays, which numpy stores with pickle '
                                 '(unsafe for untrusted files); pass --allow-pickle if you '
                                 'trust it')
        with np.load(path, allow_pickle=True) as npz:
            return npz[key]
    except EvalInputError:
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise EvalInputError(f'{path}: cannot read as .npz ({e})') from e


def _npz_items(path: Path, allow_pickle: bool = False) -> List[Item]:
    arr = _npz_array(path, allow_pickle)
    if arr.dtype == object:
        maps = list(arr)
    elif arr.ndim == 2:
        maps = [arr]
    elif arr.ndim in (3, 4):
        maps = list(arr)
    else:
        raise EvalInputError(f'{path}: expected (N, H, W) maps, got shape {arr.shape}')
    return [Item(None, f'{path}[{i}]', (lambda m=m: np.asarray(m))) for i, m in enumerate(maps)]


def _folder_items(path: Path, suffixes: Dict[str, Callable[[Path], np.ndarray]]) -> List[Item]:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise EvalInputError(f'{path}: no {"/".join(suffixes)} files')
    seen: Dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            raise EvalInputError(f'{path}: {seen[p.stem].name} and {p.name} share the stem '
                                 f'{p.stem!r}; keep one')
        seen[p.stem] = p
    return [Item(p.stem, str(p), (lambda p=p: suffixes[p.suffix.lower()](p))) for p in files]


def list_items(path: str, suffixes: Dict[str, Callable[[Path], np.ndarray]],
               role: str, allow_pickle: bool = False) -> List[Item]:
    """
    List the maps of a folder (files with the given suffixes, sorted by name) or an .npz.

    :param path: folder or .npz file.
    :param suffixes: loader per lower-case file suffix.
    :param role: what the input is ('ground truth', ...), for messages.
    :param allow_pickle: allow .npz object arrays (pickle; trusted files only).
    :return: the items, in sorted order.
    :raises EvalInputError: missing path or no usable file.
    """
    p = Path(path)
    if p.is_dir():
        return _folder_items(p, suffixes)
    if p.is_file() and p.suffix.lower() == '.npz':
        return _npz_items(p, allow_pickle)
    if not p.exists():
        raise EvalInputError(f'{role} not found: {p}')
    raise EvalInputError(f'{role} must be a folder or an .npz file: {p}')


def _names(items: Sequence[Item], limit: int = 5) -> str:
    shown = ', '.join(i.origin for i in items[:limit])
    return shown + (f' and {len(items) - limit} more' if len(items) > limit else '')


def match_items(gt: List[Item], pred: List[Item], mode: str = 'auto'
                ) -> List[Tuple[Item, Item]]:
    """
    Pair ground-truth and prediction items.

    :param gt: ground-truth items.
    :param pred: prediction items.
    :param mode: 'stem' (equal file stems), 'order' (sorted order, equal counts) or 'auto'
        (stems when both inputs are folders, else order).
    :return: (gt, pred) pairs in ground-truth order.
    :raises EvalInputError: unmatched files (named) or unequal counts.
    """
    named = all(i.name is not None for i in gt + pred)
    if mode == 'auto':
        mode = 'stem' if named else 'order'
    if mode == 'order':
        if len(gt) != len(pred):
            raise EvalInputError(f'{len(gt)} ground-truth maps but {len(pred)} predictions; '
                                 f'matching by sorted order needs equal counts')
        return list(zip(gt, pred))
    if mode != 'stem':
        raise ValueError(f'unknown match mode {mode!r}')
    if not named:
        raise EvalInputError('matching by file stem needs folders on both sides (an .npz has '
                             'no names): use --match order')
    by_stem = {i.name: i for i in pred}
    gt_stems = {i.name for i in gt}
    missing = [i for i in gt if i.name not in by_stem]
    extra = [i for i in pred if i.name not in gt_stems]
    if missing or extra:
        msg = []
        if missing:
            msg.append(f'no prediction for {len(missing)} ground-truth file(s): '
                       f'{_names(missing)}')
        if extra:
            msg.append(f'no ground truth for {len(extra)} prediction file(s): {_names(extra)}')
        raise EvalInputError('; '.join(msg) + ' (or use --match order to pair by sorted order)')
    return [(i, by_stem[i.name]) for i in gt]


def _load(item: Item) -> np.ndarray:
    try:
        return item.load()
    except (OSError, ValueError) as e:
        raise EvalInputError(str(e) if item.origin in str(e) else f'{item.origin}: {e}') from e


# --------------------------------------------------------------------------------------------
# File readers
# --------------------------------------------------------------------------------------------

def _read_depth_png(path: Path) -> np.ndarray:
    return read_depth_png(path)[0]


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise EvalInputError(f'{path}: cannot read as .npy ({e})') from e


def _read_flow_pred(path: Path) -> np.ndarray:
    if path.suffix.lower() == '.png':
        return read_kitti_flow(path)[0]
    flow = _read_npy(path)
    if flow.ndim == 3 and flow.shape[0] == 2 and flow.shape[2] != 2:
        flow = flow.transpose(1, 2, 0)       # (2, H, W) -> (H, W, 2)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise EvalInputError(f'{path}: flow must have shape (H, W, 2) or (2, H, W), got '
                             f'{flow.shape}')
    return flow


def _read_obj_map(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise EvalInputError(f'cannot read object map {path}')
    # A palette PNG may come back expanded to colours: any non-black pixel is an object.
    return img.max(axis=2) if img.ndim == 3 else img


DEPTH_READERS = {'.png': _read_depth_png, '.npy': _read_npy}
FLOW_GT_READERS = {'.png': read_kitti_flow}
FLOW_PRED_READERS = {'.png': _read_flow_pred, '.npy': _read_flow_pred}
OBJ_MAP_READERS = {'.png': _read_obj_map}


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------

def format_table(columns: Sequence[str], values: Dict[str, Optional[float]]) -> str:
    """
    Format one row of figures under a header, 11 characters a column.

    :param columns: keys to print, in order.
    :param values: figures by key (None or NaN prints as '-').
    :return: two lines.
    """
    def cell(v: Optional[float]) -> str:
        return f'{"-":>11}' if v is None or np.isnan(v) else f'{v:11.4f}'
    return ''.join(f'{c:>11}' for c in columns) + '\n' + ''.join(cell(values.get(c))
                                                                 for c in columns)


def _subcommand(subparsers, name: str, help: str, run, description: str,  # noqa: A002
                epilog: str) -> argparse.ArgumentParser:
    """Add a sub-command that calls ``run(args)``, its help texts kept as written."""
    p = subparsers.add_parser(name, help=help, description=description, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(run=run)
    return p


def _add_match(p: argparse.ArgumentParser, default: str) -> None:
    """Add ``--match`` (auto, stem or order); ``default`` says what auto does."""
    p.add_argument('--match', choices=('auto', 'stem', 'order'), default='auto',
                   help=f'pair files by stem or by sorted order ({default})')


def _add_pair(evaluator, *args, **kwargs) -> None:
    """Call ``evaluator.add``; a ValueError (a bad input file) becomes an EvalInputError."""
    try:
        evaluator.add(*args, **kwargs)
    except ValueError as e:
        raise EvalInputError(str(e)) from e


def _json_line(values: Dict) -> str:
    clean = {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
             for k, v in values.items()}
    return json.dumps(clean, sort_keys=False)


# --------------------------------------------------------------------------------------------
# depth
# --------------------------------------------------------------------------------------------

PROTOCOLS = {
    'kitti': {'crop': 'garg', 'columns': KITTI_COLUMNS},
    'nyu': {'crop': 'nyu', 'columns': NYU_COLUMNS},
}


def add_depth_parser(subparsers) -> None:
    """Register ``trianflow-eval depth``."""
    p = _subcommand(
        subparsers, 'depth', 'single-image depth metrics (KITTI Eigen split, NYUv2)', run_depth,
        _paragraphs(
            'Evaluate predicted depth maps against ground truth, per image: resize the '
            'prediction to the ground truth (bilinear), keep min < gt < max inside the crop, '
            'scale the prediction by median(gt)/median(pred), clamp both to [min, max], then '
            'AbsRel, SqRel, RMSE, RMSE log (NYU: log10), delta < 1.25^k; means over images.',
            'Predictions must be DEPTHS. Convert the network disparity with the mapping it was '
            'trained with (config depth_net.min_depth / max_depth, see '
            'trianflow_ros.eval.depth_metrics.disp_to_depth_affine); '
            "disp_to_depth_eval_original reproduces the original's evaluation mapping.",
            NOTE_PREDICTIONS),
        _paragraphs('The last printed line is one JSON object: the means, count, '
                    'scale_mean and scale_std (spread of the per-image median scales).'))
    p.add_argument('--gt', required=True, metavar='GT',
                   help='folder of 16-bit PNG depths (value/256 m, 0 = invalid) or .npy depths '
                        '(m), or an .npz (key data or gt_depths; an object-array gt_depths.npz '
                        'needs --allow-pickle)')
    p.add_argument('--pred', required=True, metavar='PRED',
                   help='folder of .npy depths or 16-bit PNG depths (value/256), or an .npz '
                        '(N, H, W); any size, resized to the ground truth')
    p.add_argument('--protocol', choices=sorted(PROTOCOLS), default='kitti',
                   help='kitti: Garg crop, RMSE log column; nyu: crop rows 45:472, cols '
                        '41:602 of 480x640, log10 column (default: kitti)')
    p.add_argument('--crop', choices=('garg', 'eigen', 'nyu', 'none'), default=None,
                   help='override the protocol crop (none for a ground truth already cropped)')
    p.add_argument('--min-depth', type=float, default=1e-3, help='m (default: 1e-3)')
    p.add_argument('--max-depth', type=float, default=80.0,
                   help='m (default: 80, as the original for both KITTI and NYUv2)')
    p.add_argument('--allow-pickle', action='store_true',
                   help='load .npz object arrays (numpy pickle: only for files you trust)')
    p.add_argument('--no-median-scaling', dest='median_scaling', action='store_false',
                   help='evaluate metric depth as predicted (default: per-image median scaling)')
    _add_match(p, 'default auto: stems when both are folders')


def run_depth(args: argparse.Namespace) -> int:
    """Run ``trianflow-eval depth``; return the exit status."""
    protocol = PROTOCOLS[args.protocol]
    crop = args.crop if args.crop is not None else protocol['crop']
    gt = list_items(args.gt, DEPTH_READERS, 'ground truth', args.allow_pickle)
    pred = list_items(args.pred, DEPTH_READERS, 'predictions', args.allow_pickle)
    pairs = match_items(gt, pred, args.match)
    evaluator = DepthEvaluator(min_depth=args.min_depth, max_depth=args.max_depth,
                               crop=None if crop == 'none' else crop,
                               median_scaling=args.median_scaling)
    for g, p in pairs:
        _add_pair(evaluator, _load(g), _load(p), name=f'{g.origin} vs {p.origin}')
    summary = evaluator.summary()
    print(f'depth ({args.protocol}, crop {crop}, {args.min_depth:g}..{args.max_depth:g} m, '
          f'median scaling {"on" if args.median_scaling else "off"}): {summary.count} images')
    print(format_table(protocol['columns'], summary.means))
    if args.median_scaling:
        print(f'median scale: mean {summary.scale_mean:.4f}, std {summary.scale_std:.4f}')
    print(_json_line(summary.as_dict()))
    return 0


# --------------------------------------------------------------------------------------------
# flow
# --------------------------------------------------------------------------------------------

def add_flow_parser(subparsers) -> None:
    """Register ``trianflow-eval flow``."""
    p = _subcommand(
        subparsers, 'flow', 'optical-flow metrics (KITTI 2015: EPE all / noc, Fl)', run_flow,
        _paragraphs(
            'Evaluate predicted optical flow against KITTI 2015-style ground truth: EPE over '
            'the valid pixels of --gt (all) and of --gt-noc (noc), Fl = percentage of pixels '
            'with EPE > 3 px and > 5 % of |gt|; per-image values averaged over images '
            '(*_pooled keys: pooled over all pixels). Predictions of another size are resized '
            'bilinearly to the ground truth with u scaled by W/w and v by H/h.',
            NOTE_PREDICTIONS),
        'The last printed line is one JSON object (epe, epe_noc, fl, count, ...).')
    p.add_argument('--gt', required=True, metavar='GT_DIR',
                   help='folder of KITTI flow PNGs (flow_occ: 16-bit, u/v*64+2^15, valid)')
    p.add_argument('--pred', required=True, metavar='PRED_DIR',
                   help='folder of KITTI flow PNGs or .npy flows (H, W, 2), or (2, H, W) '
                        'when W != 2; channel 0 = u')
    p.add_argument('--gt-noc', metavar='GT_NOC_DIR', default=None,
                   help='folder of non-occluded ground truth (flow_noc) for epe_noc / fl_noc')
    p.add_argument('--obj-map', metavar='OBJ_MAP_DIR', default=None,
                   help='folder of KITTI object maps (0 = static) for the move / static split')
    _add_match(p, 'default: stem')


def _aligned(gt: List[Item], other: Optional[str], readers, role: str, mode: str
             ) -> List[Optional[Item]]:
    if other is None:
        return [None] * len(gt)
    return [o for _, o in match_items(gt, list_items(other, readers, role), mode)]


def run_flow(args: argparse.Namespace) -> int:
    """Run ``trianflow-eval flow``; return the exit status."""
    gt = list_items(args.gt, FLOW_GT_READERS, 'ground truth')
    pairs = match_items(gt, list_items(args.pred, FLOW_PRED_READERS, 'predictions'), args.match)
    noc = _aligned(gt, args.gt_noc, FLOW_GT_READERS, 'non-occluded ground truth', args.match)
    obj = _aligned(gt, args.obj_map, OBJ_MAP_READERS, 'object maps', args.match)
    evaluator = FlowEvaluator()
    for (g, p), n, o in zip(pairs, noc, obj):
        gt_flow, valid = _load(g)
        gt_noc, valid_noc = _load(n) if n is not None else (None, None)
        _add_pair(evaluator, _load(p), gt_flow, valid, gt_noc=gt_noc, valid_noc=valid_noc,
                  obj_map=_load(o) if o is not None else None, name=f'{g.origin} vs {p.origin}')
    summary = evaluator.summary()
    columns = [k for k in ('epe', 'epe_noc', 'epe_occ', 'epe_move', 'epe_static', 'fl',
                           'fl_noc', 'fl_move', 'fl_static') if k in summary.means]
    print(f'flow: {summary.count} images (means over images; pooled over pixels below)')
    print(format_table(columns, summary.means))
    print(format_table(columns, summary.pooled).split('\n')[1] + '   (pooled)')
    print(_json_line(summary.as_dict()))
    return 0


# --------------------------------------------------------------------------------------------
# odometry
# --------------------------------------------------------------------------------------------

def _lengths(text: str) -> Tuple[float, ...]:
    """Parse '100,200,...' into positive segment lengths (argparse type)."""
    try:
        values = tuple(float(v) for v in text.split(',') if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f'not a comma-separated list of metres: {text!r}')
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f'segment lengths must be > 0 m: {text!r}')
    return values


def _positive(text: str) -> float:
    """Parse a number > 0 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'not a number: {text!r}')
    if not value > 0:
        raise argparse.ArgumentTypeError(f'must be > 0: {text!r}')
    return value


def add_odometry_parser(subparsers) -> None:
    """Register ``trianflow-eval odometry``."""
    p = _subcommand(
        subparsers, 'odometry', 'trajectory metrics (KITTI t_err / r_err, ATE, RPE)',
        run_odometry, _paragraphs(
            'Evaluate an estimated camera trajectory against ground truth. KITTI odometry '
            'errors as the original TrianFlow evaluator: both trajectories re-based to their '
            'first pose, the estimate aligned by 7-DoF Umeyama on the positions, translation '
            '(%) and rotation (deg/100 m) errors averaged over all segments of 100..800 m '
            'starting every 10 frames. ATE (RMSE of positions, m) after SE(3) and Sim(3) '
            'alignment; RPE (RMSE of relative pose errors over --rpe-delta) after --align.',
            'Files are KITTI (12 numbers a line: 3x4 row-major T_world_cam; 13 with a leading '
            'stamp) or TUM (timestamp tx ty tz qx qy qz qw). With stamps on both sides poses '
            'are associated by time (--max-dt); otherwise by index.'),
        _paragraphs(
            'The last printed line is one JSON object: t_err (%), r_err (deg/100 m), ate (m, '
            'of --align), rpe_trans (m), rpe_rot (deg), ate_se3, ate_sim3, scale (Sim(3)), '
            'frames, length_m, align, segments (count), notes. A figure that is undefined '
            '(t_err / r_err of a sequence shorter than every segment) is null, with a note.'))
    p.add_argument('--gt', required=True, metavar='GT', help='ground-truth trajectory file')
    p.add_argument('--est', required=True, metavar='EST', help='estimated trajectory file')
    p.add_argument('--format', choices=('auto', 'kitti', 'tum'), default='auto',
                   help='file format of both files (default: auto, detected per file)')
    p.add_argument('--align', choices=('sim3', 'se3', 'none'), default='sim3',
                   help='alignment of the estimate for the KITTI errors, ate and RPE: sim3 '
                        "(7-DoF Umeyama, monocular; the original's), se3 (6-DoF) or none "
                        '(default: sim3)')
    p.add_argument('--segments', type=_lengths, metavar='L1,L2,...',
                   default=KITTI_SEGMENT_LENGTHS,
                   help='KITTI segment lengths in m (default: 100,200,...,800; e.g. 10,20,30,40 '
                        'for short clips)')
    p.add_argument('--step', type=int, default=KITTI_STEP,
                   help=f'KITTI start-frame step, frames (default: {KITTI_STEP})')
    p.add_argument('--rpe-delta', type=_positive, default=1.0,
                   help='RPE pair distance (default: 1)')
    p.add_argument('--rpe-unit', choices=('frames', 'm'), default='frames',
                   help='unit of --rpe-delta (default: frames)')
    p.add_argument('--gt-times', metavar='TIMES', default=None,
                   help='KITTI times file (one stamp a line) giving stamps to a KITTI --gt')
    p.add_argument('--est-times', metavar='TIMES', default=None,
                   help='KITTI times file giving stamps to a KITTI --est')
    p.add_argument('--max-dt', type=_positive, default=MAX_DT,
                   help=f'largest stamp difference when associating by time, s (default: '
                        f'{MAX_DT:g}, as the TUM tools; evo_ape uses 0.01)')
    p.add_argument('--association', choices=('greedy', 'nearest'), default='greedy',
                   help='greedy: unique pairs in increasing |dt| (TUM tools); nearest: every '
                        'pose of the shorter file takes its nearest stamp (default: greedy)')
    p.add_argument('--plot', metavar='OUT.png', default=None,
                   help='write a top-down (x-z) plot of the ground truth and the aligned '
                        'estimate (replaces an existing file)')


ODOMETRY_COLUMNS = ('t_err', 'r_err', 'ate', 'ate_se3', 'ate_sim3', 'rpe_trans', 'rpe_rot')


def run_odometry(args: argparse.Namespace) -> int:
    """Run ``trianflow-eval odometry``; return the exit status."""
    for role, path in (('ground truth', args.gt), ('estimate', args.est)):
        if not Path(path).is_file():
            raise EvalInputError(f'{role} not found: {path}')
    try:
        gt = read_trajectory(args.gt, args.format, args.gt_times)
        est = read_trajectory(args.est, args.format, args.est_times)
        if args.step < 1:
            raise ValueError(f'--step must be >= 1, got {args.step}')
        if args.rpe_unit == 'frames' and args.rpe_delta != int(args.rpe_delta):
            raise ValueError(f'--rpe-delta in frames must be an integer, got {args.rpe_delta}')
        result = evaluate_odometry(gt, est, align=args.align, segment_lengths=args.segments,
                                   step=args.step, rpe_delta=args.rpe_delta,
                                   rpe_unit=args.rpe_unit, max_dt=args.max_dt,
                                   association=args.association)
    except (TrajectoryFormatError, ValueError) as e:
        raise EvalInputError(str(e)) from e
    values = result.as_dict()
    scale = '-' if result.scale is None else f'{result.scale:.4f}'
    print(f'odometry: {result.frames} frames, {result.length_m:.1f} m, alignment '
          f'{result.align} (Sim(3) scale {scale}), {len(result.segments)} KITTI segments')
    print(format_table(ODOMETRY_COLUMNS, values))
    print(''.join(f'{u:>11}' for u in ('%', 'deg/100m', 'm', 'm', 'm', 'm', 'deg')))
    print(f'{"segment m":>11}{"t_err %":>11}{"r_err":>11}{"count":>11}')
    for length, (t, r, n) in result.per_length().items():
        print(f'{length:11g}' + ''.join('%11s' % '-' if v is None else f'{v:11.4f}'
                                        for v in (t, r)) + f'{n:11d}')
    if args.plot:
        # Imported here: matplotlib is only needed for the plot.
        from trianflow_ros.eval.plots import plot_trajectories
        out = plot_trajectories(args.plot, result.gt, {'estimate': result.aligned_est},
                                title=f'{Path(args.est).name} ({result.align} aligned)')
        print(f'plot: {out}')
    for note in result.notes:
        print(f'note: {note}')
    print(_json_line(values))
    return 0


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

#: One registration function per subcommand.
SUBCOMMANDS: Tuple[Callable[..., None], ...] = (add_depth_parser, add_flow_parser,
                                                add_odometry_parser)


def build_parser() -> argparse.ArgumentParser:
    """Return the ``trianflow-eval`` parser with every subcommand of :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=('Evaluate TrianFlow predictions with the protocols of the paper '
                                '(KITTI depth / flow, NYUv2 depth). ' + NOTE_PREDICTIONS),
        epilog='Every subcommand prints one JSON object of its figures as its last line.')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """``trianflow-eval``: parse the arguments, run the subcommand, report input errors."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except EvalInputError as e:
        print(f'{PROG} {args.command}: error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    raise SystemExit(main())
