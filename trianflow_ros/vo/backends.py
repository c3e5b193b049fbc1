"""
Inference backends of the learned networks: eager torch, ONNX Runtime, torch.compile.

The VO runs two networks per frame: the flow net in both directions
(:class:`FlowPairModule`: ``(img1, img2) -> (flow_12, flow_21)`` at full resolution) and the
depth net (:class:`DepthModule`: ``image -> depth``). :class:`NetBackend` runs such a module
with one of :data:`BACKENDS` (``vo.net_backend``):

=================  ==========================================================================
eager              the module itself under ``torch.no_grad`` (the reference).
onnx               the module exported to ONNX (in memory; the file is cached, see below) and
                   run by ONNX Runtime's CPU execution provider with as many intra-op threads
                   as torch (``torch.get_num_threads()``). CPU only.
compile            ``torch.compile`` (inductor); the first call per input size compiles
                   (on a 2-core CPU ~40 s for the depth net, 1.5-4 min for the flow net).
channels_last      eager with weights and inputs in the channels-last memory format.
auto               :data:`AUTO_CPU` on the CPU (the fastest measured, docs/BENCHMARKS.md
                   "Networks on the CPU"), eager on other devices.
=================  ==========================================================================

Every non-eager backend is checked on its first call for each input size: the eager module
runs on the same input and the largest absolute difference must stay within ``tolerance``
(1e-4: pixels for the flow, the depth's unit for the depth). A missing package, a failed
export or compilation, or a failed check switches the backend to eager for good, with one
warning on the ``trianflow_ros.vo.backends`` logger; nothing raises. The non-eager backends
take a snapshot of the weights on the first call per input size: use ``eager`` for a module
that is still being trained.

ONNX cache: exported models are written to :func:`default_cache_dir` ``/onnx`` (the
``TRIANFLOW_CACHE_DIR`` environment variable, else ``$XDG_CACHE_HOME/trianflow_ros``, else
``~/.cache/trianflow_ros``; ``vo.net_cache_dir`` overrides it, ``'memory'`` keeps them in
memory only). A file is named ``{flow|depth}-{H}x{W}-{key}.onnx`` with a ``.json`` note beside
it (source checkpoint, input size, versions); the key (:func:`cache_key`) hashes the weights,
the architecture, the source files of the networks, the input shapes and the torch version, so
another checkpoint, a changed checkpoint or another input size never reuse a file. Files are
written atomically into that folder only; ``python -m trianflow_ros.vo.onnx_cache`` lists the
cache and ``--clear`` deletes its models.
"""

import contextlib
import copy
import datetime
import hashlib
import io
import json
import logging
import os
from pathlib import Path
import tempfile
import time
from typing import Callable, Dict, Optional, Sequence, Tuple, Union
import warnings

import torch
from torch import nn

from trianflow_ros.geometry.threads import one_cpu_thread

#: Values of ``vo.net_backend``.
BACKENDS = ('auto', 'eager', 'onnx', 'compile', 'channels_last')
#: What 'auto' picks on the CPU, in order of preference (docs/BENCHMARKS.md "Networks on the
#: CPU": ONNX Runtime is the fastest at both the shipped and the paper resolution).
AUTO_CPU = ('onnx',)
#: Largest absolute difference from eager torch a backend may have (px of flow, depth unit).
TOLERANCE = 1e-4
#: Environment variable naming the cache folder.
CACHE_ENV = 'TRIANFLOW_CACHE_DIR'
#: ``vo.net_cache_dir`` value that keeps exported models in memory only.
MEMORY = 'memory'
#: ONNX opset of the export (grid_sample needs 16).
OPSET = 17
#: Bumped when the export itself changes (part of the cache key).
_KEY_VERSION = b'trianflow-onnx-1'
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: Source files whose code is in the exported graphs (part of the cache key).
_CODE_FILES = (sorted(str(p.relative_to(_PACKAGE_DIR)) for p in (_PACKAGE_DIR / 'nets').glob(
    '*.py')) + ['geometry/warp.py', 'vo/backends.py'])

LOG = logging.getLogger(__name__)
_MISSING = 'onnxruntime is not installed'
_WARNED = set()

Tensors = Tuple[torch.Tensor, ...]


class FlowPairModule(nn.Module):
    """``(img1, img2) -> (flow_12, flow_21)``: a FlowNet's full-resolution flows both ways."""

    kind = 'flow'

    def __init__(self, flow_net: nn.Module):
        """
        Wrap a flow network.

        :param flow_net: a ``FlowNet`` (its ``forward_backward`` is called).
        """
        super().__init__()
        self.net = flow_net

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> Tensors:
        """
        Return flow_12 and flow_21, each (B, 2, H, W) pixels.

        :param img1: image 1, (B, 3, H, W) in [0, 1] in the network's channel order.
        :param img2: image 2, same shape.
        """
        flows_12, flows_21 = self.net.forward_backward(img1, img2)
        return flows_12[0], flows_21[0]


class DepthModule(nn.Module):
    """``image -> depth``: a DepthNet's ``predict_depth``."""

    kind = 'depth'

    def __init__(self, depth_net: nn.Module):
        """
        Wrap a depth network.

        :param depth_net: a ``DepthNet``.
        """
        super().__init__()
        self.net = depth_net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """
        Return the depth (B, 1, H, W).

        :param image: (B, 3, H, W) in [0, 1] in the network's channel order.
        """
        return self.net.predict_depth(image)


def _as_tuple(out) -> Tensors:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def default_cache_dir() -> Path:
    """Return the cache: ``$TRIANFLOW_CACHE_DIR``, else in ``$XDG_CACHE_HOME`` / ``~/.cache``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
    return Path(base).expanduser() / 'trianflow_ros'


def onnx_cache_dir(setting: str = '') -> Optional[Path]:
    """
    Return the folder of the exported ONNX models for a ``vo.net_cache_dir`` value.

    :param setting: '' (:func:`default_cache_dir`), ``'memory'`` (no files: None) or a folder.
    :return: ``<folder>/onnx``, or None for ``'memory'``.
    """
    if setting == MEMORY:
        return None
    return (Path(setting).expanduser() if setting else default_cache_dir()) / 'onnx'


def cache_key(module: nn.Module, shapes: Sequence[Sequence[int]]) -> str:
    """
    Return the cache key of an exported module: a SHA-256 over everything the graph depends on.

    Hashes the weights (every state-dict tensor: name, dtype, shape, bytes), the architecture
    (the module tree's ``repr`` and the plain attributes of every submodule, e.g.
    ``cost_volume_norm``, ``search_range``, ``min_depth``), the source files of the networks,
    the input shapes and the torch version.

    :param module: a :class:`FlowPairModule` or :class:`DepthModule` (any module works).
    :param shapes: the input shapes, e.g. ``[(1, 3, 64, 192)] * 2``.
    :return: 64 hex digits.
    """
    h = hashlib.sha256(_KEY_VERSION)
    h.update(type(module).__qualname__.encode())
    h.update(repr(module).encode())
    for name, sub in module.named_modules():
        attrs = sorted((k, v) for k, v in vars(sub).items()
                       if not k.startswith('_') and k != 'training'
                       and isinstance(v, (bool, int, float, str)))
        h.update(f'{name}:{type(sub).__qualname__}:{attrs!r}'.encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f'{name}:{t.dtype}:{tuple(t.shape)}'.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    for rel in _CODE_FILES:
        path = _PACKAGE_DIR / rel
        h.update(rel.encode())
        if path.is_file():
            h.update(path.read_bytes())
    h.update(repr([tuple(int(d) for d in s) for s in shapes]).encode())
    h.update(torch.__version__.encode())
    return h.hexdigest()


def cache_path(folder: Path, module: nn.Module, shapes: Sequence[Sequence[int]]) -> Path:
    """Return the cached model's file: ``folder/{kind}-{H}x{W}-{key[:20]}.onnx``."""
    kind = getattr(module, 'kind', type(module).__name__.lower())
    h, w = shapes[0][-2:]
    return folder / f'{kind}-{h}x{w}-{cache_key(module, shapes)[:20]}.onnx'


def export_onnx(module: nn.Module, inputs: Sequence[torch.Tensor]) -> Tuple[bytes, str]:
    """
    Export a module to an ONNX model in memory (static shapes of ``inputs``).

    The TorchScript exporter (seconds) is tried first, then the dynamo exporter (needs
    ``onnxscript``; over a minute for the flow net on a 2-core CPU).

    :param module: the module, in eval mode, on the CPU.
    :param inputs: example inputs (their shapes are fixed in the graph).
    :return: (the serialised model, the exporter used: 'torchscript' or 'dynamo').
    :raises RuntimeError: both exporters failed (the message has both errors).
    """
    names = [f'input{i}' for i in range(len(inputs))]
    errors = []
    for dynamo in (False, True):
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter('ignore')
                torch.onnx.export(module, tuple(inputs), buf, dynamo=dynamo,
                                  opset_version=OPSET, input_names=names,
                                  do_constant_folding=True)
            return buf.getvalue(), 'dynamo' if dynamo else 'torchscript'
        except Exception as e:  # noqa: B902 - any exporter failure means: try the next one
            errors.append(f'{"dynamo" if dynamo else "torchscript"} exporter: '
                          f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}')
    raise RuntimeError('; '.join(errors))


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Runner:
    """One way to run a module: ``runner(*inputs) -> tuple of tensors``; ``name`` says which."""

    name = 'eager'

    def __call__(self, *inputs: torch.Tensor) -> Tensors:
        """Run the module on ``inputs`` (on the module's device)."""
        raise NotImplementedError


class EagerRunner(Runner):
    """The module itself, under ``torch.no_grad`` (or ``torch.inference_mode``)."""

    def __init__(self, module: nn.Module, inference_mode: bool = False):
        """
        Wrap a module.

        :param module: the module (in eval mode).
        :param inference_mode: use ``torch.inference_mode`` instead of ``torch.no_grad`` (its
            outputs cannot be modified in place outside inference mode).
        """
        self.module = module
        self.inference_mode = inference_mode
        self.name = 'inference_mode' if inference_mode else 'eager'

    def __call__(self, *inputs: torch.Tensor) -> Tensors:
        """Run the module on ``inputs``."""
        ctx = torch.inference_mode() if self.inference_mode else torch.no_grad()
        with ctx:
            return _as_tuple(self.module(*inputs))


class ChannelsLastRunner(Runner):
    """Eager on a copy of the module whose weights are channels-last, inputs likewise."""

    name = 'channels_last'

    def __init__(self, module: nn.Module):
        """
        Copy a module into the channels-last format.

        :param module: the module (not modified).
        """
        self.module = copy.deepcopy(module).to(memory_format=torch.channels_last)

    def __call__(self, *inputs: torch.Tensor) -> Tensors:
        """Run the module on ``inputs`` converted to channels-last."""
        with torch.no_grad():
            out = self.module(*(x.contiguous(memory_format=torch.channels_last)
                                for x in inputs))
        return tuple(o.contiguous() for o in _as_tuple(out))


class CompileRunner(Runner):
    """``torch.compile`` of the module (static shapes: one compilation per input size)."""

    name = 'compile'

    def __init__(self, module: nn.Module, mode: Optional[str] = None):
        """
        Compile lazily (on the first call).

        :param module: the module.
        :param mode: ``torch.compile`` mode (None: the default).
        """
        self.module = module
        self.compiled = torch.compile(module, dynamic=False, mode=mode)

    def __call__(self, *inputs: torch.Tensor) -> Tensors:
        """Run the compiled module (compiles on a new input size)."""
        with torch.no_grad():
            return tuple(o.clone() for o in _as_tuple(self.compiled(*inputs)))


def onnxruntime_version() -> Optional[str]:
    """Return the installed onnxruntime's version, or None when it cannot be imported."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


class OnnxRunner(Runner):
    """An exported model run by ONNX Runtime (CPU execution provider), for one input size."""

    name = 'onnx'

    def __init__(self, model: Union[bytes, str, Path], threads: Optional[int] = None,
                 spinning: bool = False):
        """
        Create the inference session.

        :param model: the serialised model or its file.
        :param threads: intra-op threads (default: ``torch.get_num_threads()``).
        :param spinning: let idle ONNX Runtime threads spin (lower latency, but they burn a
            core that the rest of the VO needs; off by default).
        :raises ImportError: onnxruntime is not installed.
        """
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry('session.intra_op.allow_spinning',
                                      '1' if spinning else '0')
        opts.log_severity_level = 3
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, opts, providers=['CPUExecutionProvider'])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.threads = opts.intra_op_num_threads

    def __call__(self, *inputs: torch.Tensor) -> Tensors:
        """Run the session on CPU copies of ``inputs``; outputs are CPU tensors."""
        feeds = {name: x.detach().to('cpu', torch.float32).contiguous().numpy()
                 for name, x in zip(self.input_names, inputs)}
        return tuple(torch.from_numpy(o) for o in self.session.run(None, feeds))


def max_abs_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """
    Return the largest absolute difference of two output tuples (inf on a shape mismatch).

    Non-finite values must sit at the same places with the same value (else inf).
    """
    if len(a) != len(b):
        return float('inf')
    worst = 0.0
    for x, y in zip(a, b):
        x, y = x.detach().float().cpu(), y.detach().float().cpu()
        if x.shape != y.shape:
            return float('inf')
        fx, fy = torch.isfinite(x), torch.isfinite(y)
        if not torch.equal(fx, fy) or not torch.equal(x[~fx], y[~fy]):
            return float('inf')
        if fx.any():
            worst = max(worst, float((x[fx] - y[fx]).abs().max()))
    return worst


class NetBackend:
    """
    Run a :class:`FlowPairModule` / :class:`DepthModule` with a chosen backend (see module doc).

    ``backend(*inputs) -> tuple of tensors`` on the inputs' device. ``active`` names the
    backend in use (``'eager'`` after a fallback) and ``fallback_reason`` says why.
    """

    def __init__(self, module: nn.Module, backend: str = 'auto', *, cache_dir: str = '',
                 source: str = '', tolerance: float = TOLERANCE, verify: bool = True,
                 log: Optional[Callable[[str], None]] = None):
        """
        Choose the backend (building it happens on the first call per input size).

        :param module: the wrapped network, in eval mode.
        :param backend: one of :data:`BACKENDS`.
        :param cache_dir: ``vo.net_cache_dir`` ('' = :func:`default_cache_dir`, 'memory').
        :param source: where the weights came from (the checkpoint path), for the log and the
            cache note.
        :param tolerance: the largest absolute difference from eager the first-call check
            accepts.
        :param verify: run the first-call check (tests of the check itself turn it off).
        :param log: where the warnings go (default: the module's logger).
        :raises ValueError: an unknown backend name.
        """
        if backend not in BACKENDS:
            raise ValueError(f'net backend must be one of {BACKENDS}, got {backend!r}')
        self.module = module.eval()
        self.requested = backend
        self.cache_dir = cache_dir
        self.source = source
        self.tolerance = float(tolerance)
        self.verify = verify
        self._log = log or LOG.warning
        self.kind = getattr(module, 'kind', type(module).__name__)
        self.eager = EagerRunner(module)
        self.fallback_reason: Optional[str] = None
        self.cache_files: Dict[Tuple, Optional[Path]] = {}
        self._runners: Dict[Tuple, Runner] = {}
        self._compiled: Optional[CompileRunner] = None
        self.checked: Dict[Tuple, float] = {}
        self.active = self._choose(backend)

    # ----------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        p = next(self.module.parameters(), None)
        return p.device if p is not None else torch.device('cpu')

    def _choose(self, backend: str) -> str:
        cpu = self._device().type == 'cpu'
        if backend == 'auto':
            if not cpu:
                return 'eager'
            for name in AUTO_CPU:
                if name != 'onnx' or onnxruntime_version() is not None:
                    return name
            return self._fallback(_MISSING + ' (pip install onnxruntime, see '
                                  'requirements/core.txt); the networks run slower')
        if backend == 'onnx':
            if not cpu:
                return self._fallback(f'the onnx backend runs on the CPU only and the network '
                                      f'is on {self._device()}')
            if onnxruntime_version() is None:
                return self._fallback(_MISSING + ' (pip install onnxruntime, see '
                                      'requirements/core.txt)')
        return backend

    def _fallback(self, reason: str) -> str:
        self.fallback_reason = reason
        self.active = 'eager'
        self._runners.clear()
        if reason.startswith(_MISSING):
            if _MISSING in _WARNED:          # one line per process, not one per network
                return 'eager'
            _WARNED.add(_MISSING)
            self._log(f'networks: {self.requested} backend unavailable, running eager torch '
                      f'instead: {reason}')
            return 'eager'
        self._log(f'{self.kind} net: {self.requested} backend unavailable, running eager torch '
                  f'instead: {reason}')
        return 'eager'

    # ----------------------------------------------------------------------------------------
    def _build_onnx(self, key: Tuple, inputs: Sequence[torch.Tensor]) -> Runner:
        shapes = [tuple(x.shape) for x in inputs]
        folder = onnx_cache_dir(self.cache_dir)
        path = None
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                path = cache_path(folder, self.module, shapes)
            except OSError as e:
                self._log(f'{self.kind} net: cache folder {folder} unusable ({e}); the ONNX '
                          'model stays in memory')
                folder = None
        if path is not None and path.is_file():
            try:
                runner = OnnxRunner(path)
                self.cache_files[key] = path
                return runner
            except Exception as e:  # noqa: B902 - a damaged cache file is exported again
                self._log(f'{self.kind} net: cached model {path} unreadable ({e}); exporting '
                          'again')
        example = [x.detach().to('cpu', torch.float32) for x in inputs]
        LOG.info('%s net: exporting to ONNX for input %s (once; cache: %s)', self.kind,
                 shapes[0], path or 'memory')
        t0 = time.perf_counter()
        data, exporter = export_onnx(self.module, example)
        seconds = time.perf_counter() - t0
        if path is not None:
            try:
                _write_atomically(path, data)
                note = {'source': self.source, 'kind': self.kind, 'input_shapes': shapes,
                        'exporter': exporter, 'export_s': round(seconds, 2), 'opset': OPSET,
                        'torch': torch.__version__, 'key': path.stem.rsplit('-', 1)[-1],
                        'created': datetime.datetime.now(datetime.timezone.utc).isoformat(
                            timespec='seconds')}
                _write_atomically(path.with_suffix('.json'),
                                  (json.dumps(note) + '\n').encode())
                self.cache_files[key] = path
            except OSError as e:
                self._log(f'{self.kind} net: could not write {path} ({e}); the ONNX model '
                          'stays in memory')
        return OnnxRunner(data)

    def _build(self, key: Tuple, inputs: Sequence[torch.Tensor]) -> Runner:
        if self.active == 'onnx':
            return self._build_onnx(key, inputs)
        if self.active == 'compile':
            if self._compiled is None:
                self._compiled = CompileRunner(self.module)
            return self._compiled
        if self.active == 'channels_last':
            return ChannelsLastRunner(self.module)
        return self.eager

    def __call__(self, *inputs: torch.Tensor) -> Tensors:
        """
        Run the module on ``inputs``; outputs on the first input's device.

        The first call per input size builds the backend (export / compilation) and checks
        it against eager; any failure falls back to eager (one warning), never raises.
        """
        if self.active == 'eager':
            return self.eager(*inputs)
        device = inputs[0].device
        key = tuple(tuple(x.shape) for x in inputs) + (str(device),)
        runner = self._runners.get(key)
        first = runner is None
        if first:
            try:
                runner = self._build(key, inputs)
            except Exception as e:  # noqa: B902 - any build failure: eager, one warning
                self._fallback(f'{type(e).__name__}: {e}')
                return self.eager(*inputs)
        try:
            out = runner(*inputs)
        except Exception as e:  # noqa: B902 - a backend that cannot run: eager, one warning
            self._fallback(f'running it failed: {type(e).__name__}: {e}')
            return self.eager(*inputs)
        out = tuple(o.to(device) for o in out)
        if first:
            if self.verify:
                with one_cpu_thread(device):     # torch's 2 threads crawl on a loaded CPU
                    ref = self.eager(*inputs)
                diff = max_abs_diff(out, ref)
                self.checked[key] = diff
                if not diff <= self.tolerance:
                    self._fallback(f'its outputs differ from eager torch by {diff:.3g} '
                                   f'(> {self.tolerance:g}) at input {list(key[0])}')
                    return ref
            self._runners[key] = runner
        return out
