"""
Which weights the node runs, and building its odometry (``checkpoint``, ``fallback_to_classical``).

Rule: ``checkpoint`` parameter > ``vo.checkpoint`` of ``config_file`` > classical (DIS flow,
no depth network): the classical pipeline is the default because it beats the shipped small
weights on every real sequence of ``bench/vo_real.py`` (docs/BENCHMARKS.md, issue 12);
``checkpoint:=default`` names ``models/default.pth`` (package share, then source tree; an error
when missing).
Weights that were asked for but cannot be used (a missing path, a directory, an empty or
corrupt file) stop the node at start-up with an error that names the file and the fix (exit
status 1), unless ``fallback_to_classical`` is true: then the error is logged and the node
runs the classical pipeline. A checkpoint of this package stores the configuration it was
trained with: the network variant, the input size ``data.img_height`` / ``data.img_width``,
``data.bgr`` and the depth range are taken from it (logged,
:func:`~trianflow_ros.vo.providers.network_config`), over ``config_file`` and the defaults;
only ``data.img_height`` / ``data.img_width`` given as ROS parameters keep the user's size.
"""

import copy
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

import torch

from trianflow_ros.config import Config
from trianflow_ros.nets.checkpoint import CheckpointError
from trianflow_ros.ros.params import AUTO
from trianflow_ros.vo.odometry import VisualOdometry
from trianflow_ros.vo.providers import (find_default_checkpoint, network_config,
                                        resolve_checkpoint)


class StartupError(RuntimeError):
    """The node cannot start (bad weights, parameters); the message names the fix."""


def default_weights() -> Optional[Path]:
    """Return ``models/default.pth`` of the installed package or the source tree, if present."""
    return find_default_checkpoint()


def _check_file(value: str, source: str) -> Path:
    path = Path(value).expanduser()
    fix = ("Fix: pass an existing .pth to checkpoint:=..., checkpoint:='' for the classical "
           'pipeline, or fallback_to_classical:=true')
    if path.is_dir():
        raise StartupError(f"weights '{value}' ({source}) is a directory, not a .pth file. "
                           f'{fix}')
    if not path.is_file():
        raise StartupError(f"weights file '{value}' ({source}) does not exist. {fix}")
    if path.stat().st_size == 0:
        raise StartupError(f"weights file '{value}' ({source}) is empty (0 bytes): an "
                           f'interrupted download or copy. {fix}')
    return path


def resolve_weights(param: str, cfg: Config) -> Tuple[str, str]:
    """
    Return (checkpoint path or '', where it came from) by the rule of the module docstring.

    :raises StartupError: an explicitly named file is missing, a directory or empty.
    """
    for value, source in ((param, 'checkpoint parameter'), (cfg.vo.checkpoint, 'config_file')):
        if value == 'default':
            try:
                return str(resolve_checkpoint(value)), f'{source} (default)'
            except CheckpointError as e:
                raise StartupError(f"{e} Or: checkpoint:='' for the classical pipeline") from e
        if value:
            return str(_check_file(value, source)), source
    return '', 'none (classical: the default, see the module docstring)'


def _classical(cfg: Config, device: str, logger, reason: str):
    logger.error(f'{reason}; fallback_to_classical is true: running the classical pipeline '
                 '(DIS flow, no depth network)')
    cfg.vo.flow_provider, cfg.vo.depth_provider, cfg.vo.checkpoint = 'dis', 'none', ''
    return VisualOdometry(cfg, device=device)


def build_odometry(cfg: Config, checkpoint: str, device: str, fallback: bool, logger,
                   flow: str = AUTO, depth: str = AUTO, explicit: Iterable[str] = ()
                   ) -> Tuple[VisualOdometry, Dict[str, str]]:
    """
    Build the VisualOdometry of the node.

    With learned networks the network-defined settings of the checkpoint are adopted
    (``network_config``; the rule of the module docstring) and logged; ``vo.cfg`` is the
    configuration actually used.

    :param cfg: the resolved config.
    :param checkpoint: the ``checkpoint`` parameter.
    :param device: the ``device`` parameter.
    :param fallback: ``fallback_to_classical``.
    :param logger: where warnings go.
    :param flow: ``vo.flow_provider`` parameter ('auto', 'dis', 'net').
    :param depth: ``vo.depth_provider`` parameter ('auto', 'none', 'net').
    :param explicit: dotted config names set explicitly by ROS parameters (only
        ``data.img_height`` / ``data.img_width`` then keep their value over the checkpoint's).
    :return: the odometry and a description (flow, depth, weights, device, network input)
        for diagnostics.
    :raises StartupError: weights requested but unusable (and no fallback).
    """
    cfg = copy.deepcopy(cfg)
    if device.startswith('cuda') and not torch.cuda.is_available():
        logger.warning(f"device '{device}' requested but CUDA is not available: running on "
                       'the CPU')
        device = 'cpu'
    cfg.vo.device = device
    fallen = None
    try:
        weights, source = resolve_weights(checkpoint, cfg)
    except StartupError as e:
        if not fallback:
            raise
        weights, source, fallen = '', 'fallback (classical)', str(e)
    if fallen is None:
        flow = ('net' if weights else 'dis') if flow == AUTO else flow
        depth = ('net' if weights else 'none') if depth == AUTO else depth
        if (flow == 'net' or depth == 'net') and not weights:
            raise StartupError(f'vo.flow_provider={flow}, vo.depth_provider={depth} need '
                               'weights, but none are set and models/default.pth does not '
                               'exist. Fix: set checkpoint:=/path/to/weights.pth, or '
                               'vo.flow_provider:=dis vo.depth_provider:=none')
        cfg.vo.flow_provider, cfg.vo.depth_provider = flow, depth
        cfg.vo.checkpoint = weights if (flow == 'net' or depth == 'net') else ''
        try:
            net_cfg = cfg
            if cfg.vo.checkpoint:
                net_cfg, notes = network_config(cfg.vo.checkpoint, cfg, explicit)
                for note in notes:
                    logger.info(note)
            vo = VisualOdometry(net_cfg, device=device)
        except Exception as e:  # CheckpointError, OSError, RuntimeError of torch.load
            reason = f"cannot load the weights '{weights}' ({source}): {e}"
            if not fallback:
                raise StartupError(
                    f"{reason}. Fix: pass a valid checkpoint (checkpoint:=...), checkpoint:='' "
                    'with vo.flow_provider:=dis vo.depth_provider:=none for the classical '
                    'pipeline, or fallback_to_classical:=true') from e
            fallen = reason
            weights, source = '', 'fallback (classical)'
    if fallen is not None:
        flow, depth = 'dis', 'none'
        vo = _classical(cfg, device, logger, fallen)
    used = vo.cfg.data
    order = 'bgr' if used.bgr else 'rgb'
    if flow != 'net' and depth != 'net':
        weights, source = '', 'classical pipeline' if fallen is None else source
    return vo, {'flow': flow, 'depth': depth, 'weights': weights or '(none)',
                'weights_source': source, 'device': str(vo.device),
                'network_input': f'{used.img_width}x{used.img_height} {order}'}
