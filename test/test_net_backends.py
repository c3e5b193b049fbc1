"""Inference backends of the networks (trianflow_ros.vo.backends): parity, fallback, cache."""

import importlib.util
import json
import logging
import subprocess
import sys

import pytest
import torch

from trianflow_ros.config import Config
from trianflow_ros.nets.depth_net import DepthNet
from trianflow_ros.nets.flow_net import FlowNet
from trianflow_ros.vo import backends as B
from trianflow_ros.vo.providers import (find_default_checkpoint, load_networks, make_providers,
                                        NetworkDepthProvider, NetworkFlowProvider)

HW = (64, 192)
HAS_ORT = importlib.util.find_spec('onnxruntime') is not None
needs_ort = pytest.mark.skipif(not HAS_ORT, reason='onnxruntime is not installed (pip install '
                               '-r requirements/core.txt); the onnx backend cannot run')


def _nets(seed=0, width=0.5, search_range=4):
    torch.manual_seed(seed)
    flow = FlowNet(width_mult=width, search_range=search_range, cost_volume_norm=True).eval()
    depth = DepthNet(width_mult=width).eval()
    return B.FlowPairModule(flow).eval(), B.DepthModule(depth).eval()


def _images(n=2, hw=HW, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, *hw, generator=g) for _ in range(n)]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Return an empty cache folder, also named by TRIANFLOW_CACHE_DIR."""
    folder = tmp_path / 'cache'
    monkeypatch.setenv(B.CACHE_ENV, str(folder))
    return folder


def _check_parity(backend_name, module, inputs, cache_dir):
    ref = B.EagerRunner(module)(*inputs)
    lines = []
    runner = B.NetBackend(module, backend_name, cache_dir=str(cache_dir), log=lines.append)
    assert runner.active == backend_name, lines
    for _ in range(2):                                # first call (checked) and a cached one
        out = runner(*inputs)
        assert runner.active == backend_name, lines
        assert len(out) == len(ref)
        for o, r in zip(out, ref):
            assert o.shape == r.shape and o.dtype == torch.float32
            assert torch.isfinite(o).all()
        diff = B.max_abs_diff(out, ref)
        assert diff <= B.TOLERANCE, f'{backend_name}: max |diff| {diff}'
    assert lines == []
    return runner


@needs_ort
@pytest.mark.parametrize('net', ['flow', 'depth'])
def test_onnx_matches_eager(net, cache):
    """ONNX Runtime gives the eager outputs within 1e-4 (flow px, depth) on random inputs."""
    flow, depth = _nets()
    module, inputs = (flow, _images(2)) if net == 'flow' else (depth, _images(1))
    runner = _check_parity('onnx', module, inputs, '')
    key = tuple(tuple(x.shape) for x in inputs) + ('cpu',)
    assert runner.checked[key] <= B.TOLERANCE
    assert runner.cache_files[key].parent == cache / 'onnx'


@needs_ort
def test_onnx_matches_eager_with_the_shipped_weights(cache):
    """The shipped weights (trained values, not random) through ONNX Runtime, both nets."""
    if find_default_checkpoint() is None:
        pytest.fail('models/default.pth is missing')
    flow_net, depth_net = load_networks('default')
    _check_parity('onnx', B.FlowPairModule(flow_net), _images(2, seed=5), '')
    _check_parity('onnx', B.DepthModule(depth_net), _images(1, seed=5), '')


@pytest.mark.parametrize('net', ['flow', 'depth'])
def test_channels_last_matches_eager(net, tmp_path):
    """Channels-last weights and inputs give the eager outputs within 1e-4."""
    flow, depth = _nets()
    module, inputs = (flow, _images(2)) if net == 'flow' else (depth, _images(1))
    _check_parity('channels_last', module, inputs, tmp_path)
    assert next(module.parameters()).is_contiguous()       # the original is not converted


def test_compile_matches_eager(tmp_path):
    """
    Check that torch.compile (inductor) gives the eager outputs within 1e-4, both nets.

    Small variants (width 0.25, flow search range 1): compiling the full flow net takes minutes
    on a 2-core CPU; the code paths are the same.
    """
    flow, depth = _nets(width=0.25, search_range=1)
    _check_parity('compile', flow, _images(2, hw=(64, 128)), tmp_path)
    _check_parity('compile', depth, _images(1, hw=(64, 128)), tmp_path)


def test_eager_backend_is_the_module(tmp_path):
    """'eager' runs the module itself: bitwise the eager result, nothing exported."""
    flow, _ = _nets()
    a, b = _images(2)
    runner = B.NetBackend(flow, 'eager', cache_dir=str(tmp_path))
    out = runner(a, b)
    with torch.no_grad():
        ref = flow(a, b)
    assert all(torch.equal(o, r) for o, r in zip(out, ref))
    assert not any(tmp_path.iterdir())


def test_unknown_backend_is_rejected():
    """A name outside BACKENDS is a ValueError (the config validates it too)."""
    flow, _ = _nets()
    with pytest.raises(ValueError, match='net backend must be one of'):
        B.NetBackend(flow, 'tensorrt')


# --- fallback ------------------------------------------------------------------------------

def test_missing_onnxruntime_falls_back_to_eager(monkeypatch, tmp_path, caplog):
    """Without onnxruntime, 'onnx' and 'auto' run eager torch with one log line, no crash."""
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)       # import raises ImportError
    monkeypatch.setattr(B, '_WARNED', set())
    assert B.onnxruntime_version() is None
    flow, depth = _nets()
    a, b = _images(2)
    with caplog.at_level(logging.WARNING, logger=B.LOG.name):
        runners = [B.NetBackend(flow, 'onnx', cache_dir=str(tmp_path)),
                   B.NetBackend(depth, 'auto', cache_dir=str(tmp_path))]
    assert [r.active for r in runners] == ['eager', 'eager']
    assert all('onnxruntime is not installed' in r.fallback_reason for r in runners)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and 'onnxruntime is not installed' in lines[0], lines
    assert 'running eager torch instead' in lines[0]
    out = runners[0](a, b)
    with torch.no_grad():
        ref = flow(a, b)
    assert all(torch.equal(o, r) for o, r in zip(out, ref))
    assert not any(tmp_path.iterdir())


@needs_ort
def test_failed_export_falls_back_to_eager(monkeypatch, tmp_path):
    """An export error: one warning naming it, eager outputs, no exception, no retry."""
    calls = []

    def broken_export(module, inputs):
        calls.append(1)
        raise RuntimeError('torchscript exporter: Unsupported: grid_sampler')

    monkeypatch.setattr(B, 'export_onnx', broken_export)
    flow, _ = _nets()
    a, b = _images(2)
    lines = []
    runner = B.NetBackend(flow, 'auto', cache_dir=str(tmp_path), log=lines.append)
    assert runner.active == 'onnx'
    out = runner(a, b)
    assert runner.active == 'eager'
    assert len(lines) == 1 and 'Unsupported: grid_sampler' in lines[0]
    assert 'running eager torch instead' in lines[0]
    with torch.no_grad():
        ref = flow(a, b)
    assert all(torch.equal(o, r) for o, r in zip(out, ref))
    runner(a, b)
    assert len(calls) == 1 and len(lines) == 1


@needs_ort
def test_outputs_beyond_the_tolerance_fall_back_to_eager(monkeypatch, cache):
    """A backend whose first output is off by more than 1e-4 is dropped for eager."""
    original = B.OnnxRunner.__call__

    def off_by_1e3(self, *inputs):
        return tuple(o + 1e-3 for o in original(self, *inputs))

    monkeypatch.setattr(B.OnnxRunner, '__call__', off_by_1e3)
    _, depth = _nets()
    x, = _images(1)
    lines = []
    runner = B.NetBackend(depth, 'onnx', log=lines.append)
    out, = runner(x)
    assert runner.active == 'eager'
    assert len(lines) == 1 and 'differ from eager torch by 0.001' in lines[0], lines
    with torch.no_grad():     # (the check's eager run is on one thread: rounding only)
        assert (out - depth(x)).abs().max() < 1e-6


def test_failed_compile_falls_back_to_eager(monkeypatch, tmp_path):
    """A compiler error at the first call (e.g. no C++ compiler): eager, one warning."""
    def broken(self, *inputs):
        raise RuntimeError('InductorError: no working C++ compiler found')

    monkeypatch.setattr(B.CompileRunner, '__call__', broken)
    _, depth = _nets()
    x, = _images(1)
    lines = []
    runner = B.NetBackend(depth, 'compile', cache_dir=str(tmp_path), log=lines.append)
    out, = runner(x)
    assert runner.active == 'eager' and len(lines) == 1 and 'C++ compiler' in lines[0]
    with torch.no_grad():
        assert torch.equal(out, depth(x))


@needs_ort
def test_unwritable_cache_keeps_the_model_in_memory(tmp_path):
    """A cache folder that cannot be created: a warning, the model in memory, still onnx."""
    blocker = tmp_path / 'file'
    blocker.write_text('a user file, not a folder')
    _, depth = _nets()
    lines = []
    runner = B.NetBackend(depth, 'onnx', cache_dir=str(blocker), log=lines.append)
    runner(*_images(1))
    assert runner.active == 'onnx'
    assert len(lines) == 1 and 'stays in memory' in lines[0]
    assert blocker.read_text() == 'a user file, not a folder'


# --- cache --------------------------------------------------------------------------------

def test_cache_key_follows_weights_architecture_and_input_size():
    """Same weights and shapes: same key; another size, weight or architecture flag: another."""
    flow, _ = _nets(seed=0)
    same, _ = _nets(seed=0)
    other, _ = _nets(seed=1)
    shapes = [(1, 3, 64, 192)] * 2
    key = B.cache_key(flow, shapes)
    assert len(key) == 64 and key == B.cache_key(same, shapes)
    assert key != B.cache_key(flow, [(1, 3, 128, 384)] * 2)
    assert key != B.cache_key(other, shapes)
    with torch.no_grad():
        same.net.pwc_model.dc_conv7.bias[0] += 1e-6
    assert key != B.cache_key(same, shapes)
    flag = B.FlowPairModule(FlowNet(width_mult=0.5, cost_volume_norm=False))
    flag.load_state_dict(flow.state_dict())
    assert key != B.cache_key(flag, shapes)
    path = B.cache_path(B.onnx_cache_dir('/x'), flow, shapes)
    assert path.name == f'flow-64x192-{key[:20]}.onnx' and str(path.parent) == '/x/onnx'


def test_cache_key_of_a_checkpoint_is_stable():
    """The shipped weights loaded twice give the same key (a reused cache file)."""
    if find_default_checkpoint() is None:
        pytest.fail('models/default.pth is missing')
    keys = [B.cache_key(B.DepthModule(load_networks('default', flow=False)[1]), [(1, 3, 64, 192)])
            for _ in range(2)]
    assert keys[0] == keys[1]


def test_cache_folders(monkeypatch, tmp_path):
    """TRIANFLOW_CACHE_DIR, XDG_CACHE_HOME, ~/.cache; 'memory' means no folder."""
    monkeypatch.setenv(B.CACHE_ENV, str(tmp_path / 'a'))
    assert B.onnx_cache_dir('') == tmp_path / 'a' / 'onnx'
    assert B.onnx_cache_dir(str(tmp_path / 'b')) == tmp_path / 'b' / 'onnx'
    assert B.onnx_cache_dir('memory') is None
    monkeypatch.delenv(B.CACHE_ENV)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'x'))
    assert B.default_cache_dir() == tmp_path / 'x' / 'trianflow_ros'
    monkeypatch.delenv('XDG_CACHE_HOME')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert B.default_cache_dir() == tmp_path / 'home' / '.cache' / 'trianflow_ros'


@needs_ort
def test_cached_model_is_reused_and_memory_writes_nothing(monkeypatch, cache, tmp_path):
    """The second backend of the same weights and size loads the file instead of exporting."""
    _, depth = _nets()
    x, = _images(1)
    first = B.NetBackend(depth, 'onnx')
    first(x)
    files = sorted(p.name for p in (cache / 'onnx').iterdir())
    assert len(files) == 2 and files[0].endswith('.json') and files[1].endswith('.onnx')
    note = json.loads((cache / 'onnx' / files[0]).read_text())
    assert note['input_shapes'] == [[1, 3, 64, 192]] and note['kind'] == 'depth'

    def no_export(module, inputs):
        raise AssertionError('exported again instead of using the cache')

    monkeypatch.setattr(B, 'export_onnx', no_export)
    lines = []
    second = B.NetBackend(depth, 'onnx', log=lines.append)
    second(x)
    assert second.active == 'onnx' and lines == []
    # another input size is another file (and needs an export)
    monkeypatch.undo()
    monkeypatch.setenv(B.CACHE_ENV, str(cache))
    second(_images(1, hw=(128, 384))[0])
    assert len(list((cache / 'onnx').glob('*.onnx'))) == 2
    # 'memory': nothing written anywhere
    mem = tmp_path / 'mem'
    monkeypatch.setenv(B.CACHE_ENV, str(mem))
    third = B.NetBackend(depth, 'onnx', cache_dir='memory')
    third(x)
    assert third.active == 'onnx' and not mem.exists()


@needs_ort
def test_damaged_cache_file_is_exported_again(cache):
    """A truncated cache file: a warning, a fresh export over it, the right outputs."""
    _, depth = _nets()
    x, = _images(1)
    B.NetBackend(depth, 'onnx')(x)
    path, = (cache / 'onnx').glob('*.onnx')
    path.write_bytes(path.read_bytes()[:1000])
    lines = []
    runner = B.NetBackend(depth, 'onnx', log=lines.append)
    runner(x)
    assert runner.active == 'onnx'
    assert len(lines) == 1 and 'unreadable' in lines[0]
    assert path.stat().st_size > 10**6


@needs_ort
def test_cache_command_lists_and_clears(cache):
    """The cache command (python -m trianflow_ros.vo.onnx_cache) lists and clears."""
    _, depth = _nets()
    B.NetBackend(depth, 'onnx')(*_images(1))
    out = subprocess.run([sys.executable, '-m', 'trianflow_ros.vo.onnx_cache'],
                         capture_output=True, text=True, check=True).stdout
    assert '1 model(s)' in out and 'depth-64x192-' in out
    out = subprocess.run([sys.executable, '-m', 'trianflow_ros.vo.onnx_cache', '--clear'],
                         capture_output=True, text=True, check=True).stdout
    assert 'deleted 1 model(s)' in out
    assert list((cache / 'onnx').iterdir()) == []


# --- providers ----------------------------------------------------------------------------

@needs_ort
def test_providers_use_the_configured_backend(cache):
    """vo.net_backend reaches both providers; onnx and eager providers agree within 1e-4."""
    cfg = Config()
    cfg.vo.flow_provider = cfg.vo.depth_provider = 'net'
    cfg.vo.checkpoint = 'default'
    cfg.data.bgr = True
    outputs = {}
    for name in ('eager', 'auto'):
        cfg.vo.net_backend = name
        flow, depth = make_providers(cfg=cfg)
        assert isinstance(flow, NetworkFlowProvider) and isinstance(depth, NetworkDepthProvider)
        a, b = _images(2, seed=3)
        outputs[name] = (*flow(a, b), depth(a))
        expected = 'onnx' if name == 'auto' else 'eager'
        assert flow.backend.active == expected and depth.backend.active == expected
    assert B.max_abs_diff(outputs['auto'], outputs['eager']) <= B.TOLERANCE
    notes = [json.loads(p.read_text()) for p in (cache / 'onnx').glob('*.json')]
    assert sorted(n['kind'] for n in notes) == ['depth', 'flow']
    assert all(n['source'].endswith('default.pth') for n in notes)


def test_provider_backend_argument_wins_over_the_config(tmp_path):
    """An explicit ``backend=`` beats cfg.vo.net_backend; no cfg means 'auto'."""
    flow, _ = _nets()
    cfg = Config()
    cfg.vo.net_backend = 'onnx'
    provider = NetworkFlowProvider(flow.net, device='cpu', cfg=cfg, backend='eager')
    assert provider.backend.requested == 'eager'
    assert NetworkFlowProvider(flow.net, device='cpu').backend.requested == 'auto'
    assert NetworkFlowProvider(flow.net, device='cpu', cfg=cfg).backend.requested == 'onnx'
