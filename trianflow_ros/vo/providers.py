"""
Pluggable flow and depth providers of the visual odometry.

Call signatures (all tensors on the odometry's device, batch size 1, working resolution):

- ``FlowProvider.__call__(img_prev, img_cur) -> (flow_12, flow_21)``: images (1, 3, H, W)
  float32 RGB in [0, 1]; flows (1, 2, H, W) in pixels, channel 0 = u, ``flow_12`` maps pixels
  of ``img_prev`` into ``img_cur``. Non-finite flow marks pixels without a match.
- ``DepthProvider.__call__(image) -> depth``: image (1, 3, H, W) as above; depth (1, 1, H, W)
  float32 along the optical axis (0 or non-finite = unknown), or None when the provider has
  no depth for this image.

Providers:

=======================  ====================================================================
DISFlowProvider          OpenCV DIS dense flow on grey images, both directions; no weights.
KLTFlowProvider          the sparse front end (``sparse``: the odometry tracks corners by
                         Lucas-Kanade, :mod:`~trianflow_ros.vo.sparse_matches`); called, it
                         gives DIS flow for the dense maps that need it.
NetworkFlowProvider      the PWC flow network (a ready module or a checkpoint path).
OracleFlowProvider       exact flow of a synthetic sequence (tests).
NetworkDepthProvider     the depth network (a ready module or a checkpoint path); its scale
                         becomes the odometry scale, as in TrianFlow's VO.
OracleDepthProvider      exact metric depth of a synthetic sequence (tests): metric odometry.
=======================  ====================================================================

The network providers run their net through a :class:`~trianflow_ros.vo.backends.NetBackend`
(``vo.net_backend``: eager torch, ONNX Runtime, torch.compile or channels-last; 'auto' is ONNX
Runtime on the CPU when it is installed, eager torch otherwise; every backend is checked
against eager torch on its first call per input size and falls back to eager with a warning).

Checkpoints are read by :func:`load_networks`: this package's training checkpoints (keys
``flow_net.*`` / ``depth_net.*`` in ``model_state_dict``) and the original TrianFlow files
(``load_original_checkpoint``), always with ``weights_only=True``. ``'default'`` names the
shipped ``models/default.pth`` (:func:`resolve_checkpoint`).

Network-defined settings (:func:`network_config`, used by ``trianflow-vo`` and the ROS node):
a checkpoint of this package stores the configuration it was trained with, and the fields of
:data:`NETWORK_FIELDS` (architecture, input size, channel order, depth range) are taken from
it, replacing the values of the user's configuration (defaults and ``--config`` / ``config_file``
files). Only the input size (:data:`INPUT_SIZE_FIELDS`) yields to an explicit user setting
(``--set data.img_height=H`` or the ROS parameters ``data.img_height`` / ``data.img_width``);
an explicit value of another network field is ignored with a note. Files without a stored
configuration (the original releases) use the user's configuration unchanged: the released
weights need the paper layout (``config/odo.yaml``: 256x832, ``data.bgr`` true, width 1).
"""

from concurrent.futures import ThreadPoolExecutor
import copy
import dataclasses
import os
from pathlib import Path
import threading
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import cv2
import numpy as np
import torch
from torch import nn

from trianflow_ros.config import Config
from trianflow_ros.geometry.threads import all_cpu_threads
from trianflow_ros.nets.checkpoint import (CheckpointError, load_original_checkpoint,
                                           load_state_dict_strict, read_checkpoint_entries,
                                           stored_config, strip_module_prefix)
from trianflow_ros.nets.depth_net import DepthNet
from trianflow_ros.nets.flow_net import FlowNet
from trianflow_ros.vo.backends import DepthModule, FlowPairModule, NetBackend

PathLike = Union[str, Path]
FlowPair = Tuple[torch.Tensor, torch.Tensor]

#: OpenCV DIS presets by name.
DIS_PRESETS = {'ultrafast': cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
               'fast': cv2.DISOPTICAL_FLOW_PRESET_FAST,
               'medium': cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
#: ITU-R BT.601 luma weights of R, G, B.
_LUMA = (0.299, 0.587, 0.114)
#: Config fields a checkpoint's stored configuration defines (see the module docstring).
NETWORK_FIELDS = ('data.img_height', 'data.img_width', 'data.bgr', 'flow_net.search_range',
                  'flow_net.width_mult', 'flow_net.cost_volume_norm', 'depth_net.num_layers',
                  'depth_net.num_disp_scales', 'depth_net.width_mult', 'depth_net.min_depth',
                  'depth_net.max_depth')
#: The network fields an explicit user setting overrides (the networks are convolutional).
INPUT_SIZE_FIELDS = ('data.img_height', 'data.img_width')
#: The shipped weights, relative to the package share folder or the source tree.
DEFAULT_CHECKPOINT = 'models/default.pth'
#: How to get ``models/default.pth`` when it is missing (the fix of the error messages).
DEFAULT_CHECKPOINT_FIX = ('train them with scripts/train_default_weights.sh (models/README.md '
                          'says how) and install the package again, or pass the path of a '
                          '.pth file instead (e.g. the original kitti_odo.pth together with '
                          'config/odo.yaml)')
PACKAGE = 'trianflow_ros'


def _check_image(image: torch.Tensor, name: str) -> None:
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(f'{name} must have shape (1, 3, H, W), got {tuple(image.shape)}')


class FlowProvider:
    """Base class: ``__call__(img_prev, img_cur) -> (flow_12, flow_21)`` (see the module)."""

    #: True when the flow comes from weights (learned), False for classical / oracle flow.
    learned = False
    #: True when the VO should refine this flow's matches by Lucas-Kanade (``vo.klt_window``):
    #: a regularised dense flow (DIS, a network); False for exact flow (the oracle).
    refine_matches = True
    #: True when the odometry takes its matches from the sparse front end
    #: (:mod:`~trianflow_ros.vo.sparse_matches`) and calls the provider only for dense maps.
    sparse = False

    def __call__(self, img_prev: torch.Tensor, img_cur: torch.Tensor) -> FlowPair:
        """
        Estimate the flow both ways.

        :param img_prev: previous (reference) image, (1, 3, H, W) RGB in [0, 1].
        :param img_cur: current image, (1, 3, H, W) RGB in [0, 1].
        :return: flow_12 (prev -> cur) and flow_21 (cur -> prev), each (1, 2, H, W) pixels.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release worker threads (none here); the provider may be used again afterwards."""


class DepthProvider:
    """Base class: ``__call__(image) -> depth (1, 1, H, W) or None`` (see the module)."""

    #: what the depth's unit is: 'network' (the depth net's own scale) or 'metric'.
    scale_kind = 'network'
    #: relative (log) error of the depth, weighing it against triangulated structure; None:
    #: ``geometry.scale.depth_sigma`` (a network); exact depth (the oracle) sets a tiny one.
    relative_sigma = None
    #: depths beyond this are not used; None: ``geometry.scale.max_depth`` (a network's depth
    #: saturates far away); 0: no limit (exact depth).
    max_depth = None

    def __call__(self, image: torch.Tensor) -> Optional[torch.Tensor]:
        """
        Predict the depth of one image.

        :param image: (1, 3, H, W) RGB in [0, 1].
        :return: depth (1, 1, H, W) float32, or None.
        """
        raise NotImplementedError


_GREY_CACHE: List[Tuple[torch.Tensor, int, np.ndarray]] = []
_GREY_CACHE_SIZE = 4
_GREY_LOCK = threading.Lock()


def to_grey_uint8(image: torch.Tensor) -> np.ndarray:
    """
    Convert a (1, 3, H, W) RGB [0, 1] tensor to an (H, W) uint8 grey image (BT.601 luma).

    The grey images of the last few tensors are kept (by identity and version, the tensor
    held so that its memory is not reused): a frame is read by the flow, the match selection,
    Lucas-Kanade and the patch check, which converted it 6 times per frame. The odometry
    registers the grey image it converts from a uint8 input (:func:`remember_grey`), so that
    such a frame is never converted here. The result is shared: do not modify it in place.

    :param image: (1, 3, H, W) float tensor.
    :return: (H, W) uint8 numpy array.
    """
    _check_image(image, 'image')
    with _GREY_LOCK:
        for tensor, version, grey in _GREY_CACHE:
            if tensor is image and version == image._version:
                return grey
    # one (1, 3) x (3, H W) product: the channel sum of a (1, 3, H, W) product was a strided
    # reduction, 1.9 ms at 256x832 on one CPU thread (this: 0.9 ms)
    luma = image.new_tensor(_LUMA).view(1, 3)
    grey = (luma @ image[0].reshape(3, -1)).reshape(image.shape[-2:])
    grey = grey.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).cpu().numpy()
    remember_grey(image, grey)
    return grey


def remember_grey(image: torch.Tensor, grey: np.ndarray) -> None:
    """
    Register ``grey`` as the grey image of ``image`` for :func:`to_grey_uint8` (made read-only).

    :param image: (1, 3, H, W) float tensor (held by the cache while it is kept).
    :param grey: (H, W) uint8 grey image of it.
    """
    grey.setflags(write=False)
    with _GREY_LOCK:
        _GREY_CACHE.insert(0, (image, image._version, grey))
        del _GREY_CACHE[_GREY_CACHE_SIZE:]


class DISFlowProvider(FlowProvider):
    """
    Classical dense flow: OpenCV's DIS (Kroeger et al., ECCV 2016) on grey images.

    Both directions are computed (two ``calc`` calls, the backward one in a worker thread with
    its own DIS instance: OpenCV releases the GIL, the results are identical and on two cores
    the pair takes ~0.6-0.8x the time of two calls in a row); no weights are needed. The grey
    image of each frame is cached (:func:`to_grey_uint8`), so a sequence converts each frame
    once.
    """

    def __init__(self, preset: str = 'medium'):
        """
        Create the DIS solver.

        :param preset: 'ultrafast', 'fast' or 'medium' (OpenCV presets; medium is the most
            accurate and ~3x slower than fast).
        """
        if preset not in DIS_PRESETS:
            raise ValueError(f'DIS preset must be one of {sorted(DIS_PRESETS)}, got {preset!r}')
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
        self._dis_back = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
        self._pool: Optional[ThreadPoolExecutor] = None

    def __call__(self, img_prev: torch.Tensor, img_cur: torch.Tensor) -> FlowPair:
        """Return (flow_12, flow_21), each (1, 2, H, W) float32 on the images' device."""
        _check_image(img_prev, 'img_prev')
        _check_image(img_cur, 'img_cur')
        g1 = to_grey_uint8(img_prev)                # cached per tensor
        g2 = to_grey_uint8(img_cur)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix='dis_backward')
        backward = self._pool.submit(self._dis_back.calc, g2, g1, None)
        f12 = self._dis.calc(g1, g2, None)
        f21 = backward.result()

        def tensor(flow: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(flow.transpose(2, 0, 1)))[None].to(
                img_prev.device, torch.float32)

        return tensor(f12), tensor(f21)

    def close(self) -> None:
        """Stop the backward-flow worker thread (a later call starts a new one)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


class KLTFlowProvider(DISFlowProvider):
    """
    The sparse front end (``vo.flow_provider: klt``): corners tracked by Lucas-Kanade.

    The odometry does not call it for its matches: it tracks the keyframe's map points and
    Shi-Tomasi corners itself (:mod:`~trianflow_ros.vo.sparse_matches`; Lucas-Kanade started
    by a one-way DIS flow of a fast preset, or by the motion), which costs far less than the
    dense DIS both ways plus the dense validity maps. A call returns DIS flow (both
    directions, ``vo.dis_preset``), which the odometry asks for only where a dense map is
    needed: a depth output (``VisualOdometry.output_depth``), a depth provider or the pose
    refinement.

    :meth:`prior` is the one-way DIS flow of ``prior_preset`` (``vo.klt_prior_preset``) that
    starts Lucas-Kanade (``vo.klt_prior: dis``).
    """

    sparse = True

    def __init__(self, preset: str = 'medium', prior_preset: str = 'fast'):
        """
        Create the DIS solvers.

        :param preset: DIS preset of the dense flow both ways (``vo.dis_preset``).
        :param prior_preset: DIS preset of the one-way start of Lucas-Kanade
            (``vo.klt_prior_preset``; at 832x256 ~2 ms ultrafast, ~4 ms fast, ~20 ms medium).
        """
        super().__init__(preset)
        if prior_preset not in DIS_PRESETS:
            raise ValueError(f'DIS preset must be one of {sorted(DIS_PRESETS)}, got '
                             f'{prior_preset!r} (vo.klt_prior_preset)')
        self.prior_preset = prior_preset
        self._dis_prior = None

    def prior(self, grey1: np.ndarray, grey2: np.ndarray) -> np.ndarray:
        """Return the DIS flow grey1 -> grey2 (H, W, 2) float32 of ``prior_preset`` (one way)."""
        if self._dis_prior is None:
            self._dis_prior = cv2.DISOpticalFlow_create(DIS_PRESETS[self.prior_preset])
        return self._dis_prior.calc(grey1, grey2, None)


def default_checkpoint_candidates() -> List[Path]:
    """
    Return where ``'default'`` (``models/default.pth``) is looked for, in this order.

    The package share folder ``share/trianflow_ros/models`` of the install prefix of this
    module and of every ``AMENT_PREFIX_PATH`` entry (an installed package), then the source
    tree's ``models/``.
    """
    here = Path(__file__).resolve()
    prefixes = [here.parents[min(5, len(here.parents) - 1)]] + [
        Path(p) for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    candidates = [p / 'share' / PACKAGE / DEFAULT_CHECKPOINT for p in prefixes]
    candidates.append(here.parents[2] / DEFAULT_CHECKPOINT)
    return list(dict.fromkeys(candidates))


def find_default_checkpoint() -> Optional[Path]:
    """Return the first existing :func:`default_checkpoint_candidates` entry, or None."""
    return next((c for c in default_checkpoint_candidates() if c.is_file()), None)


def resolve_checkpoint(path: PathLike) -> Path:
    """
    Return the file a checkpoint option names: ``'default'`` is the shipped weights.

    :param path: a file path (``~`` expanded) or ``'default'`` (``models/default.pth``, see
        :func:`default_checkpoint_candidates`).
    :raises CheckpointError: ``'default'`` and ``models/default.pth`` is not installed; the
        message names the places looked in and how to train the weights.
    """
    if str(path) != 'default':
        return Path(path).expanduser()
    found = find_default_checkpoint()
    if found is None:
        looked = default_checkpoint_candidates()
        shown = ', '.join(map(str, looked[-4:]))
        more = f' (and {len(looked) - 4} more)' if len(looked) > 4 else ''
        raise CheckpointError(f'checkpoint "default": {DEFAULT_CHECKPOINT} does not exist '
                              f'(looked in {shown}{more}). The default weights are not shipped '
                              f'yet. Fix: {DEFAULT_CHECKPOINT_FIX}.')
    return found


@dataclasses.dataclass(frozen=True)
class CheckpointContents:
    """
    One checkpoint file as read by :func:`read_weights`.

    :param path: the file (``'default'`` resolved).
    :param state: its state dict (keys as stored).
    :param entries: its other top-level entries (``config``, ``step``, ...).
    :param stored: the configuration stored with it (this package's checkpoints), else None.
    """

    path: Path
    state: Dict[str, torch.Tensor]
    entries: Dict[str, Any]
    stored: Optional[Config]


# A file read by network_config, kept for the load_networks of the same file that follows
# (so that building the odometry reads a checkpoint once); key: (path, mtime, size).
_HANDOVER: Dict[Tuple[str, int, int], CheckpointContents] = {}
_HANDOVER_LOCK = threading.Lock()


def read_weights(path: PathLike, *, keep: bool = False) -> CheckpointContents:
    """
    Read a checkpoint file (``torch.load(..., weights_only=True)``) and its stored config.

    :param path: a ``.pth`` path or ``'default'``.
    :param keep: keep what was read for the next call on the same unchanged file (one file
        is kept); a call without ``keep`` takes a kept file and forgets it.
    :return: the contents.
    :raises CheckpointError: missing / unreadable file, not a checkpoint, or an invalid stored
        configuration.
    """
    path = resolve_checkpoint(path)
    key = None
    if path.is_file():
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        with _HANDOVER_LOCK:
            if key in _HANDOVER:
                return _HANDOVER[key] if keep else _HANDOVER.pop(key)
    state, entries = read_checkpoint_entries(path)
    stored = stored_config(entries, f'checkpoint {path}', '. Fix: re-save it with the trainer.')
    contents = CheckpointContents(path, state, entries, stored)
    if keep and key is not None:
        with _HANDOVER_LOCK:
            _HANDOVER.clear()
            _HANDOVER[key] = contents
    return contents


def _get(cfg: Config, dotted: str) -> Any:
    section, name = dotted.split('.')
    return getattr(getattr(cfg, section), name)


def network_config(checkpoint: PathLike, cfg: Config, explicit: Iterable[str] = ()
                   ) -> Tuple[Config, List[str]]:
    """
    Adopt the network-defined settings of a checkpoint (the rule of the module docstring).

    The file is read once and kept for the :func:`load_networks` that builds the odometry.

    :param checkpoint: a ``.pth`` path or ``'default'``.
    :param cfg: the user's configuration (not modified).
    :param explicit: dotted config names the user set explicitly (``--set`` keys, ROS
        parameters given); of :data:`NETWORK_FIELDS` only :data:`INPUT_SIZE_FIELDS` keep the
        user's value.
    :return: a new configuration with the fields of :data:`NETWORK_FIELDS` from the stored
        configuration (unchanged when the file has none), and lines for the log saying what
        was taken from the checkpoint.
    :raises CheckpointError: the file cannot be read (see :func:`read_weights`).
    """
    contents = read_weights(checkpoint, keep=True)
    out = copy.deepcopy(cfg)
    name = str(contents.path)
    if contents.stored is None:
        notes = [
            f'{name} has no stored configuration (an original TrianFlow checkpoint): the '
            f'networks and their input follow the configuration given: '
            f'{cfg.data.img_width}x{cfg.data.img_height}, data.bgr={cfg.data.bgr}, width_mult '
            f'{cfg.flow_net.width_mult}/{cfg.depth_net.width_mult} (the released weights need '
            'the paper layout of config/odo.yaml: 256x832, data.bgr=true, width_mult 1)']
        if 'vo.resize_interpolation' not in set(explicit):
            # the original resized with cv2's default INTER_LINEAR (infer_vo.py and its
            # training loader); INTER_AREA differs by up to 51/255 on a KITTI frame
            out.vo.resize_interpolation = 'linear'
            notes.append('vo.resize_interpolation=linear (cv2.INTER_LINEAR, as the original '
                         'resized for these weights)')
        return out, notes
    explicit = set(explicit)
    taken, kept, ignored = [], [], []
    for key in NETWORK_FIELDS:
        theirs, mine = _get(contents.stored, key), _get(out, key)
        if key in explicit and key in INPUT_SIZE_FIELDS:
            if mine != theirs:
                kept.append(f'{key}={mine} (checkpoint: {theirs})')
            continue
        if key in explicit and mine != theirs:
            ignored.append(f'{key}={mine}')
        section, field = key.split('.')
        setattr(getattr(out, section), field, theirs)
        taken.append(f'{key}={theirs}' + (f' (was {mine})' if mine != theirs else ''))
    notes = [f'network settings taken from the stored configuration of {name}: '
             + ', '.join(taken)]
    if kept:
        notes.append("input size set explicitly, used instead of the checkpoint's: "
                     + ', '.join(kept))
    if ignored:
        notes.append(f'ignored explicit setting(s) {", ".join(ignored)}: the networks of {name} '
                     'were trained with the stored values (only data.img_height / img_width '
                     'can be overridden)')
    return out, notes


def load_networks(path: PathLike, *, flow: bool = True, depth: bool = True,
                  cfg: Optional[Config] = None
                  ) -> Tuple[Optional[FlowNet], Optional[DepthNet]]:
    """
    Build the networks and fill them from a checkpoint, strictly.

    The architecture (``flow_net.search_range`` / ``width_mult``, ``depth_net.*``) comes from
    the configuration stored in the checkpoint when it has one (this package's checkpoints,
    e.g. the small variant of ``models/default.pth``), else from ``cfg`` (the original
    checkpoints: the paper networks). Each returned network carries that stored configuration
    as ``net.stored_config`` (None for an original file). The input size (``data.img_height``
    / ``img_width``) and channel order (``data.bgr``) of the stored configuration are adopted
    by :func:`network_config`, which callers run on their configuration first.

    :param path: a training checkpoint of this package (``model_state_dict`` with
        ``flow_net.*`` and ``depth_net.*`` keys), an original TrianFlow ``.pth``, or
        ``'default'``: the shipped ``models/default.pth`` (:func:`resolve_checkpoint`).
    :param flow: build and load the flow network.
    :param depth: build and load the depth network.
    :param cfg: network options for files without a stored configuration; defaults.
    :return: (flow_net or None, depth_net or None), in eval mode on the CPU.
    :raises CheckpointError: unreadable file, invalid stored configuration, 'default' not
        found, or the requested network is not in the file.
    """
    contents = read_weights(path)
    path, stored = contents.path, contents.stored
    arch = stored or cfg or Config()
    flow_net = FlowNet.from_config(arch) if flow else None
    depth_net = DepthNet.from_config(arch) if depth else None
    state = strip_module_prefix(contents.state, f'checkpoint {path}')
    if any(k.startswith('flow_net.') for k in state):          # this package's layout
        for name, net in (('flow_net', flow_net), ('depth_net', depth_net)):
            if net is None:
                continue
            sub = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + '.')}
            if not sub:
                raise CheckpointError(f'checkpoint {path} has no {name}.* weights. Fix: pass '
                                      f'a checkpoint of a stage that trained the {name}, or '
                                      f'run without it (e.g. --flow dis / no depth).')
            load_state_dict_strict(net, sub, f'checkpoint {path}', key_prefix=name + '.')
    else:
        load_original_checkpoint(path, depth_net=depth_net, flow_net=flow_net,
                                 preloaded=(contents.state, tuple(contents.entries)))
    for net in (flow_net, depth_net):
        if net is not None:
            net.eval()
            net.stored_config = stored
    return flow_net, depth_net


def _module(spec, attr: str, kind: type, cfg: Optional[Config]) -> nn.Module:
    """Return a network from a module, a model holding it as ``attr``, or a checkpoint path."""
    if isinstance(spec, (str, Path)):
        flow_net, depth_net = load_networks(spec, flow=kind is FlowNet,
                                            depth=kind is DepthNet, cfg=cfg)
        return flow_net if kind is FlowNet else depth_net
    if isinstance(spec, nn.Module):
        if hasattr(spec, attr) and not isinstance(spec, kind):
            spec = getattr(spec, attr)
        return spec
    raise TypeError(f'expected a {kind.__name__}, a model with .{attr}, or a checkpoint path; '
                    f'got {type(spec).__name__}')


class _NetworkRunner:
    """
    Shared part of the network providers: the net, its device, channel order and backend.

    A subclass names the network it wraps: ``_attr`` (the attribute of a model that holds it)
    and ``_kind`` (its class).
    """

    _attr: str
    _kind: type

    def __init__(self, net, device: Optional[Union[str, torch.device]] = None,
                 bgr: bool = True, cfg: Optional[Config] = None, *,
                 backend: Optional[str] = None, cache_dir: Optional[str] = None):
        """
        Wrap a network.

        :param net: the network (a FlowNet or DepthNet), a model with ``.flow_net`` /
            ``.depth_net``, or a checkpoint path.
        :param device: where the network runs (default: where its parameters are).
        :param bgr: feed BGR (``data.bgr``).
        :param cfg: network options when loading from a path; its ``vo.net_backend`` and
            ``vo.net_cache_dir`` are the defaults of ``backend`` and ``cache_dir``.
        :param backend: inference backend (``vo.net_backend``; default 'auto' without cfg).
            The non-eager backends take a snapshot of the weights on the first call: use
            'eager' for a network that is still being trained.
        :param cache_dir: folder of the exported ONNX models (``vo.net_cache_dir``).
        """
        self.net = _module(net, self._attr, self._kind, cfg)
        if device is not None:
            self.net.to(device)
        self.net.eval()
        self.bgr = bgr
        if backend is None:
            backend = cfg.vo.net_backend if cfg is not None else 'auto'
        if cache_dir is None:
            cache_dir = cfg.vo.net_cache_dir if cfg is not None else ''
        wrapper = FlowPairModule if self._kind is FlowNet else DepthModule
        source = str(resolve_checkpoint(net)) if isinstance(net, (str, Path)) else ''
        self.backend = NetBackend(wrapper(self.net), backend, cache_dir=cache_dir,
                                  source=source)

    def _inputs(self, *images: torch.Tensor) -> List[torch.Tensor]:
        """Images moved to the net's device, in BGR order when ``bgr``."""
        dev = next(self.net.parameters()).device
        return [x.to(dev).flip(1) if self.bgr else x.to(dev) for x in images]


class NetworkFlowProvider(_NetworkRunner, FlowProvider):
    """
    The learned flow network (``FlowNet.forward_backward``, full-resolution output).

    The images are fed in BGR order when ``bgr`` (the released weights were trained on BGR).
    H and W should be multiples of 64 (the network's training size). The network runs through
    ``self.backend`` (:class:`~trianflow_ros.vo.backends.NetBackend`). Built from a FlowNet, a
    model with ``.flow_net`` or a checkpoint path (see :class:`_NetworkRunner`).
    """

    learned = True
    _attr, _kind = 'flow_net', FlowNet

    def __call__(self, img_prev: torch.Tensor, img_cur: torch.Tensor) -> FlowPair:
        """Return (flow_12, flow_21), each (1, 2, H, W), on the images' device."""
        _check_image(img_prev, 'img_prev')
        _check_image(img_cur, 'img_cur')
        a, b = self._inputs(img_prev, img_cur)
        with all_cpu_threads():               # the VO step runs on one thread around it
            f12, f21 = self.backend(a, b)
        return f12.float().to(img_prev.device), f21.float().to(img_prev.device)


class NetworkDepthProvider(_NetworkRunner, DepthProvider):
    """
    The learned depth network; depth = disp_to_depth(disp, min_depth, max_depth).

    Built from a DepthNet, a model with ``.depth_net`` or a checkpoint path (see
    :class:`_NetworkRunner`).
    """

    _attr, _kind = 'depth_net', DepthNet

    def __call__(self, image: torch.Tensor) -> Optional[torch.Tensor]:
        """Return the predicted depth (1, 1, H, W) on the image's device."""
        _check_image(image, 'image')
        x, = self._inputs(image)
        with all_cpu_threads():
            depth, = self.backend(x)
        return depth.float().to(image.device)


class _SequenceLookup:
    """Find a frame of a synthetic sequence by its image content (for the oracles)."""

    def __init__(self, sequence, tolerance: float = 0.01):
        self.sequence = sequence
        self.images = sequence.images.float().cpu()
        self.tolerance = tolerance

    def index(self, image: torch.Tensor) -> Optional[int]:
        _check_image(image, 'image')
        if tuple(image.shape[-2:]) != tuple(self.images.shape[-2:]):
            raise ValueError(f'oracle providers need the sequence resolution '
                             f'{tuple(self.images.shape[-2:])}, got {tuple(image.shape[-2:])}; '
                             "set data.img_height/img_width and vo.resolution='network', or "
                             "vo.resolution='native'")
        err = (self.images - image.detach().float().cpu()).abs().mean(dim=(1, 2, 3))
        best = int(err.argmin())
        return best if float(err[best]) < self.tolerance else None


class OracleFlowProvider(FlowProvider):
    """
    Exact flow of a :class:`~trianflow_ros.data.synthetic.SyntheticSequence` (tests).

    Frames are recognised by their image content (mean absolute difference below 0.01, so
    uint8-rounded input is found too); for an image that is not a frame of the sequence the
    flow is NaN everywhere (no match at all), which the odometry treats as a flow failure.
    """

    refine_matches = False

    def __init__(self, sequence):
        """
        Wrap a sequence.

        :param sequence: a SyntheticSequence.
        """
        self._lookup = _SequenceLookup(sequence)
        self._cache: Dict[Tuple[int, int], FlowPair] = {}

    def __call__(self, img_prev: torch.Tensor, img_cur: torch.Tensor) -> FlowPair:
        """Return the ground-truth (flow_12, flow_21) on the images' device."""
        i, j = self._lookup.index(img_prev), self._lookup.index(img_cur)
        if i is None or j is None:
            nan = torch.full((1, 2) + tuple(img_prev.shape[-2:]), float('nan'),
                             device=img_prev.device)
            return nan, nan.clone()
        if (i, j) not in self._cache:
            pair = self._lookup.sequence.pair(i, j)
            self._cache = {(i, j): (pair.flow_ij[None].float(), pair.flow_ji[None].float())}
        f12, f21 = self._cache[(i, j)]
        return f12.to(img_prev.device), f21.to(img_prev.device)


class OracleDepthProvider(DepthProvider):
    """Exact metric depth of a synthetic sequence (tests); None for unknown images."""

    scale_kind = 'metric'
    relative_sigma = 1e-4
    max_depth = 0.0

    def __init__(self, sequence):
        """
        Wrap a sequence.

        :param sequence: a SyntheticSequence.
        """
        self._lookup = _SequenceLookup(sequence)

    def __call__(self, image: torch.Tensor) -> Optional[torch.Tensor]:
        """Return the ground-truth depth (1, 1, H, W), or None."""
        i = self._lookup.index(image)
        if i is None:
            return None
        return self._lookup.sequence.depths[i][None].float().to(image.device)


def _make_provider(spec, cfg: Config, device, base: type, option: str, classical: str,
                   make_classical, network: type, instead: str):
    """
    Turn a specification into a provider.

    The rule of both :func:`make_flow_provider` and :func:`make_depth_provider`.

    :param base: the provider class (an instance is returned as is).
    :param option: the ``vo`` field that chooses between ``classical`` and 'net'.
    :param classical: the name of the provider without weights; ``make_classical()`` builds it.
    :param network: the network provider class.
    :param instead: the alternative that the error for a missing checkpoint suggests.
    """
    if isinstance(spec, base):
        return spec
    if spec is None:
        if getattr(cfg.vo, option) == classical:
            return make_classical()
        if not cfg.vo.checkpoint:
            raise ValueError(f"vo.{option} 'net' needs a checkpoint: set vo.checkpoint "
                             f'(or --checkpoint), or {instead}')
        spec = cfg.vo.checkpoint
    if isinstance(spec, str) and spec == classical:
        return make_classical()
    return network(spec, device=device, bgr=cfg.data.bgr, cfg=cfg)


def make_flow_provider(spec=None, cfg: Optional[Config] = None,
                       device: Optional[torch.device] = None) -> FlowProvider:
    """
    Turn a flow specification into a provider.

    :param spec: a FlowProvider (returned as is), 'dis', 'klt', a FlowNet / model with
        ``.flow_net``, a checkpoint path, or None (``cfg.vo.flow_provider``: 'dis', 'klt', or
        'net' with ``cfg.vo.checkpoint``).
    :param cfg: the configuration (defaults when None).
    :param device: device of a network.
    :raises ValueError: 'net' without a checkpoint.
    """
    cfg = cfg or Config()
    if (spec is None and cfg.vo.flow_provider == 'klt') or (isinstance(spec, str)
                                                            and spec == 'klt'):
        return KLTFlowProvider(cfg.vo.dis_preset, cfg.vo.klt_prior_preset)
    return _make_provider(spec, cfg, device, FlowProvider, 'flow_provider', 'dis',
                          lambda: DISFlowProvider(cfg.vo.dis_preset), NetworkFlowProvider,
                          'use the classical flow (dis)')


def make_depth_provider(spec=None, cfg: Optional[Config] = None,
                        device: Optional[torch.device] = None) -> Optional[DepthProvider]:
    """
    Turn a depth specification into a provider (or None: classical, propagated scale).

    :param spec: a DepthProvider (returned as is), a DepthNet / model with ``.depth_net``, a
        checkpoint path, 'none', or None (``cfg.vo.depth_provider``: 'none', or 'net' with
        ``cfg.vo.checkpoint``).
    :param cfg: the configuration (defaults when None).
    :param device: device of a network.
    :raises ValueError: 'net' without a checkpoint.
    """
    return _make_provider(spec, cfg or Config(), device, DepthProvider, 'depth_provider', 'none',
                          lambda: None, NetworkDepthProvider, "use vo.depth_provider 'none'")


def make_providers(flow=None, depth=None, cfg: Optional[Config] = None,
                   device: Optional[torch.device] = None
                   ) -> Tuple[FlowProvider, Optional[DepthProvider]]:
    """
    Return (flow provider, depth provider or None), reading a shared checkpoint once.

    As :func:`make_flow_provider` and :func:`make_depth_provider`, except that a checkpoint
    that serves both networks is read once for both.

    :param flow: flow specification (see :func:`make_flow_provider`).
    :param depth: depth specification (see :func:`make_depth_provider`).
    :param cfg: the configuration (defaults when None).
    :param device: device of the networks.
    """
    cfg = cfg or Config()
    if flow is None and depth is None and cfg.vo.flow_provider == 'net' \
            and cfg.vo.depth_provider == 'net' and cfg.vo.checkpoint:
        flow = depth = cfg.vo.checkpoint
    source = None
    if isinstance(flow, (str, Path)) and isinstance(depth, (str, Path)) \
            and str(flow) == str(depth) and str(flow) not in ('dis', 'klt', 'none'):
        source = str(resolve_checkpoint(flow))
        flow, depth = load_networks(flow, cfg=cfg)
    providers = make_flow_provider(flow, cfg, device), make_depth_provider(depth, cfg, device)
    for provider in providers:
        if source is not None and isinstance(provider, _NetworkRunner):
            provider.backend.source = source      # for the note beside a cached ONNX model
    return providers
