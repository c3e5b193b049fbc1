"""
Which weights the odometry runs, and building it: one rule for ``trianflow-vo`` and ``vo_node``.

Rule (the front ends differ only in their inputs: flags or ROS parameters):

1. Weights: an explicit checkpoint (``--checkpoint``, the ``checkpoint`` parameter) >
   ``vo.checkpoint`` of the configuration (``--config``, ``config_file``) > none
   (:func:`pick_weights`). ``default`` names ``models/default.pth`` (package share, then source
   tree; an error naming the fix when missing).
2. Providers: ``auto`` means the networks when there are weights, else the classical pipeline
   (DIS flow, no depth network); a network without weights is an error
   (:class:`MissingWeightsError`, each front end names its own fix). The classical pipeline is
   the default because it beats the shipped small weights on every real sequence of
   ``bench/vo_real.py`` (docs/BENCHMARKS.md, issue 12).
3. A checkpoint of this package stores the configuration it was trained with: the network
   variant, the input size ``data.img_height`` / ``data.img_width``, ``data.bgr`` and the
   depth range are taken from it (logged, :func:`~trianflow_ros.vo.providers.network_config`);
   only an explicitly given input size keeps the user's value (:func:`odometry_config`).

The node (:func:`build_odometry`) also checks the file before reading it: weights that were
asked for but cannot be used (a missing path, a directory, an empty or corrupt file) raise
:class:`StartupError` naming the file and the fix, unless ``fallback`` is true: then the error
is logged and the classical pipeline runs.
"""

import copy
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch

from trianflow_ros.config import Config
from trianflow_ros.nets.checkpoint import CheckpointError
from trianflow_ros.vo.odometry import VisualOdometry
from trianflow_ros.vo.providers import (find_default_checkpoint, network_config,
                                        resolve_checkpoint)

#: A provider chosen by the rule: the networks when there are weights, else the classical.
AUTO = 'auto'
#: Where the weights came from when there are none.
CLASSICAL_SOURCE = 'none (classical: the default, see the module docstring)'
#: The fix named by the node's errors about an unusable weights file.
NODE_FILE_FIX = ("Fix: pass an existing .pth to checkpoint:=..., checkpoint:='' for the "
                 'classical pipeline, or fallback_to_classical:=true')


class StartupError(RuntimeError):
    """The odometry cannot start (bad weights, parameters); the message names the fix."""


class MissingWeightsError(StartupError):
    """A learned network is asked for without weights (the front end words the fix)."""

    def __init__(self, flow: str, depth: str):
        """Keep the providers asked for."""
        super().__init__(f'vo.flow_provider={flow}, vo.depth_provider={depth} need weights, '
                         'but none are set')
        self.flow, self.depth = flow, depth


def default_weights() -> Optional[Path]:
    """Return ``models/default.pth`` of the installed package or the source tree, if present."""
    return find_default_checkpoint()


def pick_weights(explicit: str, cfg: Config,
                 names: Tuple[str, str] = ('checkpoint parameter', 'config_file')
                 ) -> Tuple[str, str]:
    """
    Return (weights as given or '', where they came from): explicit > ``cfg.vo.checkpoint``.

    :param explicit: the checkpoint given explicitly ('' for none).
    :param cfg: the configuration (its ``vo.checkpoint``).
    :param names: how the two sources are named.
    """
    for value, source in ((explicit, names[0]), (cfg.vo.checkpoint, names[1])):
        if value:
            return value, source
    return '', CLASSICAL_SOURCE


def check_weights_file(value: str, source: str, fix: str = NODE_FILE_FIX) -> Path:
    """
    Return the path of a weights file that exists and is not empty.

    :raises StartupError: missing, a directory or empty (the message names ``fix``).
    """
    path = Path(value).expanduser()
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
    Return (checkpoint path or '', where it came from) of the node (:func:`pick_weights`).

    ``default`` is resolved; a named file is checked (:func:`check_weights_file`).

    :raises StartupError: an explicitly named file is missing, a directory or empty.
    """
    value, source = pick_weights(param, cfg)
    if value == 'default':
        try:
            return str(resolve_checkpoint(value)), f'{source} (default)'
        except CheckpointError as e:
            raise StartupError(f"{e} Or: checkpoint:='' for the classical pipeline") from e
    if value:
        return str(check_weights_file(value, source)), source
    return '', source


def choose_providers(weights: str, flow: str = AUTO, depth: str = AUTO) -> Tuple[str, str]:
    """
    Return (flow, depth) providers: ``auto`` = the networks with weights, else the classical.

    :raises MissingWeightsError: a network without weights.
    """
    flow = ('net' if weights else 'dis') if flow == AUTO else flow
    depth = ('net' if weights else 'none') if depth == AUTO else depth
    if (flow == 'net' or depth == 'net') and not weights:
        raise MissingWeightsError(flow, depth)
    return flow, depth


def uses_networks(cfg: Config) -> bool:
    """Return whether the configuration runs a learned network."""
    return 'net' in (cfg.vo.flow_provider, cfg.vo.depth_provider)


def odometry_config(cfg: Config, weights: str, flow: str = AUTO, depth: str = AUTO,
                    explicit: Iterable[str] = (),
                    log: Callable[[str], None] = lambda _text: None) -> Config:
    """
    Return the configuration the odometry runs: providers, weights and the checkpoint's fields.

    :param cfg: the user's configuration (not modified).
    :param weights: the weights picked (:func:`pick_weights`; ``default`` is resolved here).
    :param flow: 'auto', 'dis' or 'net'.
    :param depth: 'auto', 'none' or 'net'.
    :param explicit: dotted config names set explicitly (only ``data.img_height`` /
        ``data.img_width`` then keep their value over the checkpoint's).
    :param log: where the notes on the adopted fields go (one string per call).
    :raises MissingWeightsError: a network without weights.
    :raises CheckpointError: unreadable weights, or ``default`` is not installed.
    """
    flow, depth = choose_providers(weights, flow, depth)
    cfg = copy.deepcopy(cfg)
    cfg.vo.flow_provider, cfg.vo.depth_provider, cfg.vo.checkpoint = flow, depth, weights
    if not uses_networks(cfg):
        return cfg
    cfg.vo.checkpoint = str(resolve_checkpoint(weights))
    cfg, notes = network_config(cfg.vo.checkpoint, cfg, explicit)
    for note in notes:
        log(note)
    return cfg


def build(cfg: Config, device: Optional[str] = None) -> VisualOdometry:
    """Build the odometry of a configuration from :func:`odometry_config`."""
    return VisualOdometry(cfg, device=device)


def _classical(cfg: Config, device: str, logger, reason: str) -> VisualOdometry:
    logger.error(f'{reason}; fallback_to_classical is true: running the classical pipeline '
                 '(DIS flow, no depth network)')
    cfg.vo.flow_provider, cfg.vo.depth_provider, cfg.vo.checkpoint = 'dis', 'none', ''
    return build(cfg, device)


def build_odometry(cfg: Config, checkpoint: str, device: str, fallback: bool, logger,
                   flow: str = AUTO, depth: str = AUTO, explicit: Iterable[str] = ()
                   ) -> Tuple[VisualOdometry, Dict[str, str]]:
    """
    Build the VisualOdometry of the node by the rule of the module docstring.

    With learned networks the network-defined settings of the checkpoint are adopted and
    logged; ``vo.cfg`` is the configuration actually used.

    :param cfg: the resolved config.
    :param checkpoint: the ``checkpoint`` parameter.
    :param device: the ``device`` parameter.
    :param fallback: ``fallback_to_classical``.
    :param logger: where warnings go (``info``, ``warning``, ``error``).
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
        try:
            net_cfg = odometry_config(cfg, weights, flow, depth, explicit, logger.info)
            flow, depth = net_cfg.vo.flow_provider, net_cfg.vo.depth_provider
            if not uses_networks(net_cfg):
                net_cfg.vo.checkpoint = ''
            vo = build(net_cfg, device)
        except MissingWeightsError as e:
            raise StartupError(f'{e} and models/default.pth does not exist. Fix: set '
                               'checkpoint:=/path/to/weights.pth, or vo.flow_provider:=dis '
                               'vo.depth_provider:=none') from None
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
