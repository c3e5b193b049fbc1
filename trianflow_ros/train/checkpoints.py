"""
Training checkpoints: atomic writes, safe reads, exact resume, and pretrained-weight loading.

A checkpoint of this package (``format`` ``'trianflow_ros/1'``) is a dict of plain types and
tensors only, so it is read with ``torch.load(..., weights_only=True)`` (no arbitrary
unpickling):

=========================  ======================================================================
key                        value
=========================  ======================================================================
``format``                 ``'trianflow_ros/1'``
``stage``                  ``train.mode`` of the run (``'flow'``, ``'depth'``, ``'depth_pose'``..)
``step``                   optimisation steps done
``model_state_dict``       the model's state dict (never a ``module.`` prefix)
``optimizer_state_dict``   Adam's state
``scaler_state_dict``      ``GradScaler`` state (AMP on CUDA), or None
``config``                 the resolved configuration as YAML text (``dump_yaml``)
``rng``                    :func:`capture_rng_state` of every rank (torch, CUDA, NumPy, Python,
                           the model's own generators) and the sampler position
=========================  ======================================================================

Files of a run folder: ``step_{k:07d}.pth`` every ``train.save_interval`` steps and
``last.pth`` (each written to a temporary file and moved into place with ``os.replace``, so
a crash never leaves a half-written checkpoint under the final name).

Pretrained weights (:func:`init_flow`, :func:`init_depth`) come from a checkpoint of this
package or from the original TrianFlow's files (any of its layouts, via
:func:`trianflow_ros.nets.checkpoint.load_original_checkpoint`). A ``module.`` prefix
(``DataParallel`` / ``DistributedDataParallel``) is removed from the start of every key --
the original instead renamed flow keys to ``module.model_flow.*`` for multi-GPU runs, which
does not match its own ``Model_depth_pose`` (notes Sec. 1.2) and was hidden by
``strict=False``. Here every load is strict and a mismatch names the keys.
"""

import fnmatch
import os
from pathlib import Path
import random
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from trianflow_ros.config import Config, from_dict
from trianflow_ros.nets.checkpoint import (CheckpointError, load_original_checkpoint,
                                           load_state_dict_strict, read_file, stored_config,
                                           strip_module_prefix)

PathLike = Union[str, Path]

#: Value of the ``format`` key of this package's training checkpoints.
FORMAT = 'trianflow_ros/1'
#: Name of the checkpoint a resume normally starts from.
LAST_NAME = 'last.pth'
#: File names (fnmatch patterns) a run writes into its folder.
RUN_FILE_PATTERNS = ('last.pth', 'step_*.pth', 'metrics.jsonl', 'config.yaml',
                     'events.out.tfevents.*')


class RunDirError(RuntimeError):
    """A run folder cannot be used as asked (it holds an earlier run, or is not a folder)."""


def step_name(step: int) -> str:
    """Return the file name of the checkpoint of ``step``: ``step_{k:07d}.pth``."""
    return f'step_{int(step):07d}.pth'


def unwrap(model: nn.Module) -> nn.Module:
    """Return the module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper."""
    return model.module if isinstance(
        model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


# --------------------------------------------------------------------------------------------
# Random number generator states (as tensors and plain types, for weights_only loading)
# --------------------------------------------------------------------------------------------

def find_generators(model: nn.Module) -> Dict[str, torch.Generator]:
    """
    Find ``torch.Generator`` attributes of a model and its submodules.

    A model may own generators (e.g. seeded RANSAC sampling); their states must be saved
    and restored for an exact resume.

    :param model: the (unwrapped) model.
    :return: ``'submodule.attribute'`` -> generator, in a stable order.
    """
    found: Dict[str, torch.Generator] = {}
    for name, module in unwrap(model).named_modules():
        for attr, value in sorted(vars(module).items()):
            if isinstance(value, torch.Generator):
                found[f'{name}.{attr}' if name else attr] = value
    return found


def capture_rng_state(generators: Optional[Mapping[str, torch.Generator]] = None
                      ) -> Dict[str, Any]:
    """
    Capture every random generator state of this process as tensors and plain values.

    :param generators: named extra generators (:func:`find_generators`).
    :return: a dict accepted by ``torch.load(weights_only=True)``; see :func:`restore_rng_state`.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    if kind != 'MT19937':
        raise RuntimeError(f'unexpected NumPy generator {kind!r}')
    version, internal, gauss_next = random.getstate()
    state: Dict[str, Any] = {
        'torch': torch.get_rng_state(),
        'numpy': {'keys': torch.from_numpy(np.asarray(keys, dtype=np.int64)), 'pos': int(pos),
                  'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
        'python': {'version': int(version),
                   'internal': torch.tensor(internal, dtype=torch.int64),
                   'gauss_next': None if gauss_next is None else float(gauss_next)},
        'cuda': (list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available()
                 and torch.cuda.is_initialized() else []),
        'generators': {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def restore_rng_state(state: Mapping[str, Any],
                      generators: Optional[Mapping[str, torch.Generator]] = None) -> None:
    """
    Restore the states captured by :func:`capture_rng_state`.

    :param state: the captured dict.
    :param generators: the same named generators as at capture; a name missing on either
        side raises.
    :raises CheckpointError: the state is malformed or the generators differ.
    """
    try:
        torch.set_rng_state(state['torch'])
        np_state = state['numpy']
        np.random.set_state(('MT19937', np_state['keys'].numpy().astype(np.uint32),
                             int(np_state['pos']), int(np_state['has_gauss']),
                             float(np_state['cached_gaussian'])))
        py = state['python']
        random.setstate((int(py['version']), tuple(int(v) for v in py['internal'].tolist()),
                         py['gauss_next']))
        cuda_states = list(state.get('cuda') or [])
        if cuda_states and torch.cuda.is_available():
            if len(cuda_states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda_states)
        saved = dict(state.get('generators') or {})
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f'malformed random-generator state in the checkpoint: '
                              f'{type(e).__name__}: {e}') from e
    generators = dict(generators or {})
    if set(saved) != set(generators):
        raise CheckpointError(
            f'the checkpoint holds the states of generators {sorted(saved)} but the model has '
            f'{sorted(generators)}. Fix: resume with the code version that wrote the '
            'checkpoint, or start a new run from it with --init-depth.')
    for name, g in generators.items():
        g.set_state(saved[name])


# --------------------------------------------------------------------------------------------
# Writing and reading
# --------------------------------------------------------------------------------------------

def atomic_save(obj: Any, path: PathLike) -> Path:
    """
    ``torch.save`` to a temporary file beside ``path``, then ``os.replace`` it into place.

    :param obj: what to save.
    :param path: final file name (its folder must exist).
    :return: the path.
    """
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def make_checkpoint(*, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    stage: str, config_yaml: str, rng: Mapping[str, Any],
                    scaler: Optional[Any] = None) -> Dict[str, Any]:
    """
    Build the checkpoint dict (see the module doc).

    :param model: the model (a DDP wrapper is unwrapped; keys never carry ``module.``).
    :param optimizer: its optimizer.
    :param step: steps done.
    :param stage: ``train.mode``.
    :param config_yaml: the resolved configuration as YAML text.
    :param rng: ``{'world_size': W, 'ranks': [capture_rng_state() of each rank]}`` plus the
        sampler position.
    :param scaler: a ``torch.amp.GradScaler`` or None.
    """
    return {
        'format': FORMAT,
        'stage': str(stage),
        'step': int(step),
        'model_state_dict': unwrap(model).state_dict(),
        'optimizer_state_dict': optimizer.state_dict(),
        'scaler_state_dict': (scaler.state_dict() if scaler is not None and scaler.is_enabled()
                              else None),
        'config': str(config_yaml),
        'rng': dict(rng),
    }


def _load(path: PathLike) -> Any:
    return read_file(path, fix='use another checkpoint of the run (step_NNNNNNN.pth) or retrain',
                     not_found_fix='pass an existing .pth file (runs keep last.pth and '
                                   'step_NNNNNNN.pth in their folder)')


def read_training_checkpoint(path: PathLike) -> Dict[str, Any]:
    """
    Read and check a checkpoint written by this package's trainer.

    :param path: the ``.pth`` file.
    :return: the checkpoint dict (tensors on the CPU).
    :raises CheckpointError: missing, unreadable, or not a ``trianflow_ros/1`` checkpoint.
    """
    ckpt = _load(path)
    if not isinstance(ckpt, dict) or ckpt.get('format') != FORMAT:
        found = ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f'{path} is not a training checkpoint of trianflow_ros (format {found!r}, expected '
            f'{FORMAT!r}). Fix: to start from weights of the original TrianFlow or of another '
            'run, use --init-flow / --init-depth instead of --resume.')
    missing = [k for k in ('stage', 'step', 'model_state_dict', 'optimizer_state_dict',
                           'config', 'rng') if k not in ckpt]
    if missing:
        raise CheckpointError(f'{path}: checkpoint lacks {missing}; it is incomplete.')
    return ckpt


def config_from_checkpoint(ckpt: Mapping[str, Any], source: str = 'checkpoint') -> Config:
    """
    Rebuild the resolved configuration stored in a checkpoint.

    :param ckpt: a checkpoint dict (``config`` is YAML text or a nested dict).
    :param source: name for messages.
    :return: the stored configuration (the defaults when the checkpoint stores none).
    :raises CheckpointError: the stored configuration does not parse or validate.
    """
    cfg = stored_config(ckpt, source)
    return cfg if cfg is not None else from_dict({})


def _our_format(path: PathLike) -> Optional[Dict[str, Any]]:
    """Return the checkpoint if it is this package's, None for any other (original) layout."""
    obj = _load(path)
    if isinstance(obj, dict) and obj.get('format') == FORMAT:
        return obj
    if isinstance(obj, dict) and 'format' in obj:
        raise CheckpointError(f'{path}: unknown checkpoint format {obj["format"]!r} '
                              f'(this version reads {FORMAT!r}).')
    return None


def init_flow(model: nn.Module, path: PathLike) -> str:
    """
    Load the flow network of a stage-1 checkpoint into ``model.flow_net`` (strict).

    :param model: a model with a ``flow_net`` submodule.
    :param path: a checkpoint of this package (any stage; its ``flow_net.*`` keys are used) or
        an original TrianFlow file of any layout (``Model_flow``, ``Model_depth_pose``, ...).
    :return: a one-line description of what was loaded.
    :raises CheckpointError: unreadable file, no flow weights, or mismatching keys/shapes.
    """
    model = unwrap(model)
    ours = _our_format(path)
    if ours is None:
        report = load_original_checkpoint(path, flow_net=model.flow_net)
        return f'--init-flow: {report}'
    state = strip_module_prefix(ours['model_state_dict'], str(path))
    prefix = 'flow_net.'
    flow = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not flow:
        raise CheckpointError(f'{path} ({ours.get("stage")} stage) has no {prefix}* weights. '
                              'Fix: pass a flow-stage checkpoint of this package or an '
                              'original TrianFlow file.')
    load_state_dict_strict(model.flow_net, flow, f'{path} [{prefix}*]', key_prefix=prefix,
                           fix='pass a checkpoint trained with the same flow_net settings')
    return (f'--init-flow: loaded flow_net ({len(flow)} tensors) from {path} '
            f'(stage {ours.get("stage")!r}, step {ours.get("step")})')


def init_depth(model: nn.Module, path: PathLike) -> str:
    """
    Load a stage-2 checkpoint into the whole model (strict), for stage 3.

    :param model: the model of the new stage.
    :param path: a checkpoint of this package (whole model, same model class), or an
        original TrianFlow ``Model_depth_pose`` file (depth and flow networks).
    :return: a one-line description of what was loaded.
    :raises CheckpointError: unreadable file or mismatching keys/shapes.
    """
    model = unwrap(model)
    ours = _our_format(path)
    if ours is None:
        nets = {'depth_net': getattr(model, 'depth_net', None),
                'flow_net': getattr(model, 'flow_net', None)}
        report = load_original_checkpoint(path, **nets)
        return f'--init-depth: {report}'
    state = strip_module_prefix(ours['model_state_dict'], str(path))
    load_state_dict_strict(model, state, str(path),
                           fix='pass a checkpoint of the same model class and network '
                               'settings (a depth-stage run of this package)')
    return (f'--init-depth: loaded the whole model ({len(state)} tensors) from {path} '
            f'(stage {ours.get("stage")!r}, step {ours.get("step")})')


# --------------------------------------------------------------------------------------------
# Run folders
# --------------------------------------------------------------------------------------------

def existing_run_files(out_dir: PathLike) -> List[Path]:
    """
    List the files of a run (checkpoints, metrics, config, TensorBoard events) in a folder.

    :param out_dir: the run folder (may not exist).
    :return: sorted paths; other files are never listed.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.iterdir() if p.is_file() and any(
        fnmatch.fnmatch(p.name, pattern) for pattern in RUN_FILE_PATTERNS))


def prepare_run_dir(out_dir: PathLike, *, resume: bool = False, overwrite: bool = False
                    ) -> List[Path]:
    """
    Create the run folder, refusing to write into an earlier run's folder by accident.

    :param out_dir: the run folder.
    :param resume: continuing a run in this folder: its files are kept.
    :param overwrite: delete the earlier run's files (only those of
        :data:`RUN_FILE_PATTERNS`; anything else in the folder is left alone).
    :return: the files deleted (empty unless ``overwrite``).
    :raises RunDirError: the folder holds a run and neither flag is set, or is a file.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RunDirError(f'--out {out_dir} exists and is not a folder. Fix: choose another '
                          '--out.')
    files = existing_run_files(out_dir)
    deleted: List[Path] = []
    if files and not resume:
        if not overwrite:
            shown = ', '.join(p.name for p in files[:5]) + (
                f', ... ({len(files) - 5} more)' if len(files) > 5 else '')
            raise RunDirError(
                f'run folder {out_dir} already holds a run ({shown}). Nothing was written. Fix: '
                f'continue it with --resume {out_dir / LAST_NAME}, delete its run files with '
                '--overwrite, or choose another --out.')
        for p in files:
            p.unlink()
            deleted.append(p)
    out_dir.mkdir(parents=True, exist_ok=True)
    return deleted
