r"""
``trianflow-train``: run one stage of TrianFlow's self-supervised training.

The three stages of the paper (notes Sec. 1.2), e.g. on KITTI odometry::

    trianflow-train --config config/odo.yaml --set train.mode=flow --out runs/flow
    trianflow-train --config config/odo.yaml --set train.mode=depth --out runs/depth \\
        --init-flow runs/flow/last.pth
    trianflow-train --config config/odo_3stage.yaml --out runs/joint \\
        --init-depth runs/depth/last.pth

Continue an interrupted run exactly: ``trianflow-train --resume runs/flow/last.pth`` (the
run's stored configuration is used; ``--set`` may change e.g. ``train.num_iterations``).
Several GPUs: ``torchrun --nproc_per_node=4 -m trianflow_ros.train.cli ...`` (each process
takes ``train.batch_size`` samples per step). TensorBoard: ``tensorboard --logdir runs``.
"""

import argparse
from pathlib import Path
import sys
from typing import List, Optional

from trianflow_ros.config import (add_config_arguments, Config, config_from_args, ConfigError,
                                  flatten, load_config, parse_override, set_value, validate)
from trianflow_ros.nets.checkpoint import CheckpointError
from trianflow_ros.train.checkpoints import (config_from_checkpoint, existing_run_files,
                                             read_training_checkpoint, RunDirError)

EPILOG = ('stages: flow -> depth (--init-flow) -> depth_pose (--init-depth); '
          'see trianflow_ros/train/__init__.py')


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``trianflow-train``."""
    parser = argparse.ArgumentParser(
        prog='trianflow-train', epilog=EPILOG,
        description='Train one stage of TrianFlow (train.mode: flow, depth, depth_pose, '
                    'posenet, flowposenet). Every hyper-parameter comes from the config.')
    add_config_arguments(parser)
    parser.add_argument('--out', default=None,
                        help='run folder (checkpoints, config.yaml, metrics.jsonl, TensorBoard '
                             'events); default with --resume: the folder of the checkpoint')
    parser.add_argument('--resume', default=None, metavar='CKPT',
                        help='continue a run exactly from its last.pth / step_NNNNNNN.pth')
    parser.add_argument('--init-flow', default=None, metavar='CKPT',
                        help='start from the flow net of a flow-stage checkpoint (ours or an '
                             'original TrianFlow file)')
    parser.add_argument('--init-depth', default=None, metavar='CKPT',
                        help='start from a depth-stage checkpoint (whole model; ours or an '
                             'original Model_depth_pose file)')
    parser.add_argument('--device', default='auto',
                        help='auto (CUDA when available), cpu, cuda or cuda:N')
    parser.add_argument('--max-steps', type=int, default=None, metavar='N',
                        help='stop after N steps of this invocation (checkpoint written; '
                             'continue with --resume)')
    parser.add_argument('--overwrite', action='store_true',
                        help='delete the run files (checkpoints, metrics, events, config) of an '
                             'earlier run in --out; other files are kept')
    parser.add_argument('--val-samples', type=int, default=64, metavar='N',
                        help='validate on at most N held-out samples (default 64)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser


def _differences(a: Config, b: Config, limit: int = 10) -> List[str]:
    fa, fb = flatten(a), flatten(b)
    diffs = [f'{k}: {fa[k]!r} -> {fb[k]!r}' for k in fa if fa[k] != fb.get(k)]
    return diffs[:limit] + ([f'... ({len(diffs) - limit} more)'] if len(diffs) > limit else [])


def resolve_config(args: argparse.Namespace) -> Config:
    """
    Resolve the run's configuration: ``--config`` + ``--set``.

    On ``--resume``: the configuration stored in the checkpoint, then ``--set``.

    :raises ConfigError: a bad file or override.
    :raises CheckpointError: an unreadable resume checkpoint.
    """
    if args.resume is None:
        return config_from_args(args)
    cfg = config_from_checkpoint(read_training_checkpoint(args.resume), str(args.resume))
    for text in args.overrides:
        key, value = parse_override(text)
        set_value(cfg, key, value)
    validate(cfg)
    if args.config is not None:
        given = load_config(args.config, args.overrides)
        diffs = _differences(cfg, given)
        if diffs:
            print('trianflow-train: warning: --config differs from the configuration stored in '
                  f'{args.resume}; the stored one is used (change values with --set):\n  '
                  + '\n  '.join(diffs), file=sys.stderr)
    return cfg


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``trianflow-train``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None and args.resume is None:
        parser.error('--out is required (or --resume, which continues in the folder of the '
                     'checkpoint)')
    if args.resume is not None and (args.init_flow or args.init_depth):
        parser.error('--resume continues a run; it cannot be combined with --init-flow / '
                     '--init-depth')
    if args.max_steps is not None and args.max_steps < 1:
        parser.error('--max-steps must be >= 1')
    if args.val_samples < 0:
        parser.error('--val-samples must be >= 0')
    from trianflow_ros.train.trainer import run_training
    try:
        cfg = resolve_config(args)
        out = Path(args.out) if args.out is not None else Path(args.resume).parent
        if (args.resume is not None and out.resolve() != Path(args.resume).resolve().parent
                and existing_run_files(out) and not args.overwrite):
            raise RunDirError(f'--out {out} holds another run; resuming {args.resume} into it '
                              'would mix two runs. Fix: choose an empty --out, or --overwrite.')
        result = run_training(cfg, out, device=args.device, resume=args.resume,
                              init_flow=args.init_flow, init_depth=args.init_depth,
                              overwrite=args.overwrite, max_steps=args.max_steps,
                              quiet=args.quiet, val_samples=args.val_samples)
    except (ConfigError, CheckpointError, RunDirError) as e:
        parser.exit(2, f'trianflow-train: error: {e}\n')
    if result.last_checkpoint is not None:
        shown = ', '.join(f'{k} {v:.4g}' for k, v in result.val_metrics.items()
                          if k in ('flow_epe', 'depth_abs_rel', 'loss/total'))
        print(f'done: step {result.step}, {result.seconds:.1f} s, checkpoint '
              f'{result.last_checkpoint}' + (f'; validation {shown}' if shown else ''),
              flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
