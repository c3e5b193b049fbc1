"""
Loading the original TrianFlow checkpoints into the networks of this package, strictly.

The original saves ``{'model_state_dict': model.state_dict(), ...}`` of one of its combined
model classes (notes Sec. 2.3, manifests in ``reference/checkpoint_keys/``):

=========================  =====================================================  =======
class                      key prefixes                                           tensors
=========================  =====================================================  =======
Model_depth_pose           ``depth_net.``, ``model_pose.model_flow.``             242
Model_flowposenet          ``pose_net.``, ``model_flow.``, ``depth_net.``         258
Model_triangulate_pose     ``model_flow.``                                        98
Model_flow (stage 1)       ``fpyramid.``, ``pwc_model.`` (top level)              98
=========================  =====================================================  =======

Every released file (``kitti_odo.pth``, ``kitti_depth.pth``, ``nyu.pth``, ``tum.pth``, ...)
is a ``Model_depth_pose`` dict. A ``module.`` prefix (``nn.DataParallel``) is removed. Keys
and shapes are checked before anything is copied; a mismatch raises :class:`CheckpointError`
naming the missing, unexpected and mis-shaped keys and the fix.

Checkpoints are untrusted input: they are read with ``torch.load(..., map_location='cpu',
weights_only=True)`` (no arbitrary unpickling) and nothing is fetched from the network.

One reader for every checkpoint of the package (VO, node, training): :func:`read_file` is the
only ``torch.load``; :func:`load` returns ``(state_dict, stored_config)``; the ``module.`` rule
(:func:`strip_module_prefix`) is strict: all keys carry it or none.
"""

import ast
import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from trianflow_ros.config import ConfigError, from_dict
import yaml

PathLike = Union[str, Path]

#: Shown items per category in mismatch messages (counts are always complete).
MAX_LISTED = 5

#: Flow-network key prefixes of the original classes, longest first.
FLOW_PREFIXES = ('model_pose.model_flow.', 'model_flow.', '')
DEPTH_PREFIX = 'depth_net.'
POSE_PREFIX = 'pose_net.'
DATA_PARALLEL_PREFIX = 'module.'


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or does not match the network it is loaded into."""


@dataclasses.dataclass(frozen=True)
class KeyMismatch:
    """
    Differences between a module's state dict and a checkpoint's.

    :param missing: keys the module has and the checkpoint lacks.
    :param unexpected: keys the checkpoint has and the module lacks.
    :param mis_shaped: ``(key, expected shape, checkpoint shape)`` of keys in both.
    """

    missing: Tuple[str, ...] = ()
    unexpected: Tuple[str, ...] = ()
    mis_shaped: Tuple[Tuple[str, Tuple[int, ...], Tuple[int, ...]], ...] = ()

    def __bool__(self) -> bool:
        """Return True if there is any difference."""
        return bool(self.missing or self.unexpected or self.mis_shaped)


@dataclasses.dataclass(frozen=True)
class OriginalCheckpointReport:
    """
    What :func:`load_original_checkpoint` found and loaded.

    :param path: the checkpoint file.
    :param layout: the original model class the keys belong to (``'Model_depth_pose'``, ...).
    :param loaded: the networks loaded, from ``('depth_net', 'flow_net', 'pose_net')``.
    :param available: the networks the file contains.
    :param num_tensors: number of tensors in the state dict.
    :param stripped_prefix: ``'module.'`` if a DataParallel prefix was removed, else ``''``.
    :param extra_keys: other top-level entries of the file (e.g. an iteration counter).
    """

    path: str
    layout: str
    loaded: Tuple[str, ...]
    available: Tuple[str, ...]
    num_tensors: int
    stripped_prefix: str = ''
    extra_keys: Tuple[str, ...] = ()

    def __str__(self) -> str:
        """One-line summary for logs."""
        loaded = ', '.join(self.loaded) or 'nothing'
        return (f'{self.path}: {self.layout} checkpoint ({self.num_tensors} tensors, contains '
                f'{", ".join(self.available) or "no known network"}); loaded {loaded}')


def compare_state_dicts(expected: Mapping[str, torch.Tensor],
                        state: Mapping[str, Any]) -> KeyMismatch:
    """
    Compare key sets and shapes of two state dicts.

    :param expected: the module's state dict (or any name -> tensor mapping).
    :param state: the checkpoint's state dict; a non-tensor value counts as mis-shaped.
    :return: the differences (empty if the state loads strictly).
    """
    missing = tuple(k for k in expected if k not in state)
    unexpected = tuple(k for k in state if k not in expected)
    mis_shaped = []
    for key, ref in expected.items():
        if key not in state:
            continue
        value = state[key]
        if not isinstance(value, torch.Tensor):
            mis_shaped.append((key, tuple(ref.shape), f'a {type(value).__name__}'))
        elif tuple(value.shape) != tuple(ref.shape):
            mis_shaped.append((key, tuple(ref.shape), tuple(value.shape)))
    return KeyMismatch(missing, unexpected, tuple(mis_shaped))


def _listing(items: Sequence[str]) -> str:
    shown = ', '.join(items[:MAX_LISTED])
    more = len(items) - MAX_LISTED
    return shown + (f', ... ({more} more)' if more > 0 else '')


def format_mismatch(mismatch: KeyMismatch, source_name: str, target_name: str,
                    key_prefix: str = '', fix: Optional[str] = None) -> str:
    """
    Describe a key mismatch: counts, the first few keys of each kind and the fix.

    :param mismatch: the differences.
    :param source_name: where the state comes from (file name and prefix).
    :param target_name: the module it was loaded into.
    :param key_prefix: prefix the keys carry in the file (shown in the key names).
    :param fix: how to resolve it; a generic sentence when None.
    :return: a multi-line message.
    """
    p = key_prefix
    lines = [f'{source_name} does not match {target_name}: {len(mismatch.missing)} missing, '
             f'{len(mismatch.unexpected)} unexpected, {len(mismatch.mis_shaped)} mis-shaped '
             'key(s).']
    if mismatch.missing:
        lines.append(f'  missing ({len(mismatch.missing)}): '
                     + _listing([p + k for k in mismatch.missing]))
    if mismatch.unexpected:
        lines.append(f'  unexpected ({len(mismatch.unexpected)}): '
                     + _listing([p + k for k in mismatch.unexpected]))
    if mismatch.mis_shaped:
        lines.append(f'  mis-shaped ({len(mismatch.mis_shaped)}): ' + _listing(
            [f'{p}{k} expected {e}, got {g}' for k, e, g in mismatch.mis_shaped]))
    if fix is None:
        fix = ('load a checkpoint saved from the same network, and build the network with the '
               'configuration the checkpoint was trained with')
    lines.append(f'Fix: {fix}.')
    return '\n'.join(lines)


def load_state_dict_strict(module: nn.Module, state: Mapping[str, Any], source_name: str, *,
                           key_prefix: str = '', fix: Optional[str] = None) -> None:
    """
    Load ``state`` into ``module`` after checking that keys and shapes match exactly.

    Nothing is copied if anything differs. Values are cast to the module's dtype and device.

    :param module: the network to fill.
    :param state: name -> tensor mapping with the module's own key names.
    :param source_name: where the state comes from, for the message (e.g. the file name).
    :param key_prefix: prefix the keys carry in the source, shown in the message.
    :param fix: the fix sentence of the message (a generic one when None).
    :raises CheckpointError: naming missing, unexpected and mis-shaped keys.
    """
    mismatch = compare_state_dicts(module.state_dict(), state)
    if mismatch:
        raise CheckpointError(format_mismatch(mismatch, source_name, type(module).__name__,
                                              key_prefix, fix))
    module.load_state_dict(dict(state), strict=True)


def read_manifest(path: PathLike) -> List[Tuple[str, Tuple[int, ...]]]:
    """
    Read a ``key<TAB>shape`` manifest (``reference/checkpoint_keys/*.txt``).

    :param path: manifest file; each line ``name<TAB>(d0, d1, ...)``, ``()`` for scalars.
    :return: ``(key, shape)`` pairs in file order.
    """
    entries = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            key, shape_text = line.split('\t')
            shape = tuple(int(d) for d in ast.literal_eval(shape_text.strip()))
        except (ValueError, SyntaxError, TypeError) as e:
            raise ValueError(f'{path}:{number}: expected "key<TAB>(shape)", got {line!r}') from e
        entries.append((key.strip(), shape))
    return entries


def state_dict_from_manifest(path: PathLike,
                             generator: Optional[torch.Generator] = None
                             ) -> Dict[str, torch.Tensor]:
    """
    Build a random state dict with the names and shapes of a manifest (for tests).

    float32 values: weights ~ N(0, 1 / fan_in), vectors ~ N(0, 0.1^2), BatchNorm
    ``running_var`` ~ U(0.5, 1.5); ``num_batches_tracked`` is an int64 scalar.

    :param path: manifest file (see :func:`read_manifest`).
    :param generator: random generator for reproducible values.
    :return: key -> tensor, in manifest order.
    """
    state = {}
    for key, shape in read_manifest(path):
        if key.endswith('num_batches_tracked'):
            value = torch.randint(0, 1000, shape, generator=generator, dtype=torch.int64)
        elif key.endswith('running_var'):
            value = 0.5 + torch.rand(shape, generator=generator)
        elif len(shape) >= 2:
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            value = torch.randn(shape, generator=generator) / fan_in ** 0.5
        else:
            value = 0.1 * torch.randn(shape, generator=generator)
        state[key] = value
    return state


#: The fix named when a file cannot be found or read (:func:`read_file`).
READ_FIX = ('use an original TrianFlow checkpoint, or re-save the weights with '
            "torch.save({'model_state_dict': model.state_dict()}, path)")
NOT_FOUND_FIX = ('pass the path of an existing .pth file (the released TrianFlow weights are '
                 'not downloaded by this package)')


def read_file(path: PathLike, fix: str = READ_FIX, not_found_fix: str = NOT_FOUND_FIX) -> Any:
    """
    Read a checkpoint file: the package's one ``torch.load(..., weights_only=True)``.

    :param path: the ``.pth`` file.
    :param fix: the fix named when the file cannot be read.
    :param not_found_fix: the fix named when the file does not exist.
    :return: the object stored (tensors on the CPU).
    :raises CheckpointError: the file is missing, empty or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint file not found: {path}. Fix: {not_found_fix}.')
    if path.stat().st_size == 0:
        raise CheckpointError(f'checkpoint file {path} is empty (0 bytes): an interrupted '
                              'download or copy. Fix: copy or train the weights again.')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: B902 - torch raises many types for a bad file
        first = (str(e).splitlines() or ['(no message)'])[0]
        raise CheckpointError(
            f'cannot read checkpoint {path}: {type(e).__name__}: {first}. '
            'It is corrupt, not a PyTorch file, or holds objects other than tensors and plain '
            f'containers (files are read with weights_only=True). Fix: {fix}.') from e


def strip_module_prefix(state: Mapping[str, Any], source: str = 'checkpoint'
                        ) -> Dict[str, Any]:
    """
    Remove a leading ``module.`` (DataParallel / DDP) from every key.

    :param state: a state dict.
    :param source: name for messages.
    :return: a new dict; unchanged keys when no key has the prefix.
    :raises CheckpointError: only some keys carry the prefix (a mixed, broken file).
    """
    prefixed = [k.startswith(DATA_PARALLEL_PREFIX) for k in state]
    if not any(prefixed):
        return dict(state)
    if not all(prefixed):
        raise CheckpointError(f'{source}: only {sum(prefixed)} of {len(prefixed)} keys carry '
                              f'the {DATA_PARALLEL_PREFIX!r} prefix; the file mixes layouts.')
    n = len(DATA_PARALLEL_PREFIX)
    return {k[n:]: v for k, v in state.items()}


def stored_config(entries: Mapping[str, Any], source: str = 'checkpoint', fix: str = ''):
    """
    Return the configuration a checkpoint of this package stores (``config``), else None.

    :param entries: the checkpoint's top-level entries (``config``: YAML text or a dict).
    :param source: name for messages.
    :param fix: appended to the message of an invalid configuration.
    :raises CheckpointError: the stored configuration does not parse or validate.
    """
    raw = entries.get('config')
    if raw is None:
        return None
    try:
        return from_dict((yaml.safe_load(raw) if isinstance(raw, str) else raw) or {})
    except (yaml.YAMLError, ConfigError, TypeError, AttributeError) as e:
        raise CheckpointError(f'{source}: its stored configuration is invalid: {e}{fix}') from e


def load(path: PathLike):
    """
    Read a checkpoint: ``(state_dict, stored_config)``.

    :param path: an original TrianFlow ``.pth`` or one of this package.
    :return: the state dict with a ``module.`` prefix removed (:func:`strip_module_prefix`) and
        the stored :class:`~trianflow_ros.config.Config` (None for an original file).
    :raises CheckpointError: unreadable file, not a checkpoint, mixed prefixes, or an invalid
        stored configuration.
    """
    state, entries = read_checkpoint_entries(path)
    return (strip_module_prefix(state, str(path)),
            stored_config(entries, f'checkpoint {path}', '. Fix: re-save it with the trainer.'))


def read_checkpoint(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Tuple[str, ...]]:
    """
    Read the state dict of an original-layout checkpoint file safely.

    :param path: ``.pth`` file holding ``{'model_state_dict': {...}, ...}`` (a bare state dict
        is accepted too).
    :return: the state dict (``module.`` prefixes kept) and the other top-level keys.
    :raises CheckpointError: the file is missing, unreadable, or not such a dict.
    """
    state, entries = read_checkpoint_entries(path)
    return state, tuple(entries)


def read_checkpoint_entries(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """
    Read a checkpoint file once: its state dict and its other top-level entries.

    Like :func:`read_checkpoint`, but the other entries (e.g. the ``config`` a checkpoint of
    this package stores) come back with their values.

    :param path: ``.pth`` file holding ``{'model_state_dict': {...}, ...}`` (a bare state dict
        is accepted too).
    :return: the state dict (``module.`` prefixes kept) and ``{key: value}`` of the other
        top-level entries (empty for a bare state dict).
    :raises CheckpointError: the file is missing, unreadable, or not such a dict.
    """
    obj = read_file(path)
    if isinstance(obj, dict) and 'model_state_dict' in obj:
        state = obj['model_state_dict']
        extra = {str(k): v for k, v in obj.items() if k != 'model_state_dict'}
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, extra = obj, {}
    else:
        found = (f'a dict with keys {sorted(map(str, obj))[:MAX_LISTED]}'
                 if isinstance(obj, dict) else f'a {type(obj).__name__}')
        raise CheckpointError(
            f'{path} is not a TrianFlow checkpoint: expected a dict with "model_state_dict", '
            f'found {found}. Fix: pass the .pth file saved by the original training code.')
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f'{path}: "model_state_dict" is not a name -> tensor mapping.')
    return state, extra


Groups = Dict[str, Dict[str, Any]]


def _split_groups(state: Mapping[str, Any]) -> Tuple[Groups, Dict[str, str], List[str]]:
    """Split an original state dict into depth / flow / pose parts with prefixes removed."""
    groups: Groups = {}
    prefixes: Dict[str, str] = {}
    unknown: List[str] = []
    flow_prefixes_seen = set()
    for key, value in state.items():
        if key.startswith(DEPTH_PREFIX):
            name, prefix = 'depth_net', DEPTH_PREFIX
        elif key.startswith(POSE_PREFIX):
            name, prefix = 'pose_net', POSE_PREFIX
        else:
            prefix = next((p for p in FLOW_PREFIXES
                           if key.startswith(p + 'fpyramid.') or key.startswith(p + 'pwc_model.')),
                          None)
            if prefix is None:
                unknown.append(key)
                continue
            name = 'flow_net'
            flow_prefixes_seen.add(prefix)
        groups.setdefault(name, {})[key[len(prefix):]] = value
        prefixes[name] = prefix
    if len(flow_prefixes_seen) > 1:
        raise CheckpointError('flow-network keys appear under several prefixes '
                              f'{sorted(flow_prefixes_seen)}; the file mixes model layouts.')
    return groups, prefixes, unknown


def _layout_name(prefixes: Mapping[str, str]) -> str:
    flow = prefixes.get('flow_net')
    names = set(prefixes)
    if names == {'depth_net', 'flow_net'} and flow == 'model_pose.model_flow.':
        return 'Model_depth_pose'
    if names == {'depth_net', 'flow_net', 'pose_net'} and flow == 'model_flow.':
        return 'Model_flowposenet'
    if names == {'flow_net'}:
        return 'Model_triangulate_pose' if flow == 'model_flow.' else 'Model_flow'
    return 'unknown layout (' + ', '.join(
        f'{prefixes[n] or "top-level "}*' for n in sorted(names)) + ')'


def load_original_checkpoint(path: PathLike, depth_net: Optional[nn.Module] = None,
                             flow_net: Optional[nn.Module] = None,
                             pose_net: Optional[nn.Module] = None, *,
                             preloaded: Optional[Tuple[Mapping[str, Any], Sequence[str]]] = None
                             ) -> OriginalCheckpointReport:
    """
    Load an original TrianFlow checkpoint into the given networks, with strict checks.

    All checks run before any weight is copied into any network.

    :param path: the ``.pth`` file (``{'model_state_dict': ...}`` of Model_depth_pose,
        Model_flowposenet, Model_triangulate_pose or Model_flow; ``module.`` prefix allowed).
    :param depth_net: a :class:`~trianflow_ros.nets.depth_net.DepthNet` to fill from
        ``depth_net.*``, or None.
    :param flow_net: a :class:`~trianflow_ros.nets.flow_net.FlowNet` to fill from the flow keys,
        or None.
    :param pose_net: a :class:`~trianflow_ros.nets.posenet.FlowPoseNet` to fill from
        ``pose_net.*``, or None.
    :param preloaded: ``(state dict, other top-level keys)`` of ``path`` as
        :func:`read_checkpoint` returns them, when the caller has read the file already (it is
        then not read again).
    :return: what the file contained and what was loaded.
    :raises CheckpointError: unreadable file, keys of no known network, a requested network
        absent from the file, or missing / unexpected / mis-shaped keys.
    """
    state, extra = preloaded if preloaded is not None else read_checkpoint(path)
    extra = tuple(extra)
    stripped = DATA_PARALLEL_PREFIX if any(k.startswith(DATA_PARALLEL_PREFIX)
                                           for k in state) else ''
    state = strip_module_prefix(state, str(path))
    groups, prefixes, unknown = _split_groups(state)
    layout = _layout_name(prefixes)
    if unknown:
        raise CheckpointError(format_mismatch(
            KeyMismatch(unexpected=tuple(unknown)), f'checkpoint {path}',
            'any TrianFlow network (depth_net.*, pose_net.*, [model_pose.]model_flow.'
            '{fpyramid,pwc_model}.*)', stripped,
            fix='use an original TrianFlow checkpoint (released files are Model_depth_pose '
                'dicts); keys outside the known prefixes mean another model was saved'))
    requested = {'depth_net': depth_net, 'flow_net': flow_net, 'pose_net': pose_net}
    fixes = {
        'depth_net': 'build DepthNet with num_disp_scales equal to the number of '
                     'decoder.dispconvs.* heads in the file (released weights: 1)',
        'flow_net': 'build FlowNet with search_range=4 (81-channel cost volume), as the '
                    'released weights',
        'pose_net': 'load pose_net.* of a Model_flowposenet (PoseNet-Flow) checkpoint into '
                    'FlowPoseNet',
    }
    for name, module in requested.items():
        if module is None:
            continue
        if name not in groups:
            raise CheckpointError(
                f'checkpoint {path} ({layout}) has no {name} weights; it contains '
                f'{", ".join(sorted(groups)) or "no known network"}. Fix: pass {name}=None or '
                'a checkpoint that includes it.')
        mismatch = compare_state_dicts(module.state_dict(), groups[name])
        if mismatch:
            raise CheckpointError(format_mismatch(
                mismatch, f'checkpoint {path} [{prefixes[name] or "top-level "}*]',
                type(module).__name__, stripped + prefixes[name], fixes[name]))
    loaded = []
    for name, module in requested.items():
        if module is not None:
            module.load_state_dict(groups[name], strict=True)
            loaded.append(name)
    return OriginalCheckpointReport(path=str(path), layout=layout, loaded=tuple(loaded),
                                    available=tuple(sorted(groups)), num_tensors=len(state),
                                    stripped_prefix=stripped, extra_keys=extra)
