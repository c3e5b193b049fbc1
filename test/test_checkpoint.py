"""Strict loading of the original TrianFlow checkpoint layouts (random weights from manifests)."""

import os
from pathlib import Path

import pytest
import torch

from trianflow_ros.nets.checkpoint import (
    CheckpointError, load_original_checkpoint, load_state_dict_strict, read_manifest,
    state_dict_from_manifest)
from trianflow_ros.nets.depth_net import DepthNet
from trianflow_ros.nets.feature_pyramid import FeaturePyramid
from trianflow_ros.nets.flow_net import FlowNet
from trianflow_ros.nets.posenet import FlowPoseNet
from trianflow_ros.nets.pwc_decoder import PWCDecoder

KEYS_DIR = Path(__file__).resolve().parents[2] / 'shared' / 'reference' / 'checkpoint_keys'
H, W = 64, 64


@pytest.fixture
def keys_dir() -> Path:
    """Return the manifests of the original checkpoints (../shared/reference/checkpoint_keys)."""
    if not KEYS_DIR.is_dir():
        if os.environ.get('CI'):
            pytest.fail(f'checkpoint manifests missing in CI: {KEYS_DIR}')
        pytest.skip(f'checkpoint manifests not found at {KEYS_DIR}')
    return KEYS_DIR


def random_state(keys_dir: Path, name: str, seed: int = 0) -> dict:
    return state_dict_from_manifest(keys_dir / name, torch.Generator().manual_seed(seed))


def assert_holds(module: torch.nn.Module, state: dict, prefix: str = '') -> None:
    """Every tensor of ``module`` equals the checkpoint tensor under ``prefix``."""
    own = module.state_dict()
    assert len(own) == sum(k.startswith(prefix) for k in state)
    for key, value in own.items():
        assert torch.equal(value, state[prefix + key].to(value.dtype)), key


def test_state_dict_from_manifest_types_and_reproducibility(keys_dir):
    path = keys_dir / 'keys_depth_net.txt'
    a = state_dict_from_manifest(path, torch.Generator().manual_seed(3))
    b = state_dict_from_manifest(path, torch.Generator().manual_seed(3))
    entries = read_manifest(path)
    assert [k for k, _ in entries] == list(a) and len(a) == 144
    for key, shape in entries:
        assert tuple(a[key].shape) == shape
        assert torch.equal(a[key], b[key])
        if key.endswith('num_batches_tracked'):
            assert a[key].dtype == torch.int64 and a[key].dim() == 0
        else:
            assert a[key].dtype == torch.float32
    assert (a['encoder.encoder.bn1.running_var'] > 0).all()


def test_submodule_manifests_load_strictly_and_change_outputs(keys_dir):
    img = torch.rand(1, 3, H, W)
    depth = DepthNet().eval()
    with torch.no_grad():
        before = depth(img)[0]
    state = random_state(keys_dir, 'keys_depth_net.txt')
    load_state_dict_strict(depth, state, 'keys_depth_net.txt')
    assert_holds(depth, state)
    with torch.no_grad():
        assert not torch.allclose(depth(img)[0], before)

    pyramid, decoder = FeaturePyramid(), PWCDecoder()
    with torch.no_grad():
        feats = pyramid(img)
        flow_before = decoder(feats, feats, (H, W))[0]
    for module, name in ((pyramid, 'keys_feature_pyramid.txt'), (decoder, 'keys_pwc_tf.txt')):
        state = random_state(keys_dir, name, seed=1)
        load_state_dict_strict(module, state, name)
        assert_holds(module, state)
    with torch.no_grad():
        feats = pyramid(img)
        assert not torch.allclose(decoder(feats, feats, (H, W))[0], flow_before)


@pytest.mark.parametrize('manifest, layout, nets', [
    ('keys_model_depth_pose.txt', 'Model_depth_pose', ('depth_net', 'flow_net')),
    ('keys_model_flow.txt', 'Model_flow', ('flow_net',)),
    ('keys_model_triangulate_pose.txt', 'Model_triangulate_pose', ('flow_net',)),
    ('keys_model_flowposenet.txt', 'Model_flowposenet', ('depth_net', 'flow_net', 'pose_net')),
])
def test_original_checkpoints_round_trip_through_a_file(keys_dir, tmp_path, manifest, layout,
                                                        nets):
    state = random_state(keys_dir, manifest, seed=2)
    path = tmp_path / 'model.pth'
    torch.save({'model_state_dict': state, 'iteration': 200000}, path)
    modules = {'depth_net': DepthNet(), 'flow_net': FlowNet(), 'pose_net': FlowPoseNet()}
    modules = {k: (m if k in nets else None) for k, m in modules.items()}
    img = torch.rand(1, 3, H, W)
    flow_before = None
    if modules['flow_net'] is not None:
        with torch.no_grad():
            flow_before = modules['flow_net'](img, img.flip(-1))[0]
    report = load_original_checkpoint(path, **modules)
    assert report.layout == layout
    assert report.loaded == nets and report.available == tuple(sorted(nets))
    assert report.num_tensors == len(state) and report.extra_keys == ('iteration',)
    prefixes = {'depth_net': 'depth_net.', 'pose_net': 'pose_net.',
                'flow_net': {'Model_depth_pose': 'model_pose.model_flow.',
                             'Model_flow': ''}.get(layout, 'model_flow.')}
    for name in nets:
        assert_holds(modules[name], state, prefixes[name])
    if flow_before is not None:
        with torch.no_grad():
            assert not torch.allclose(modules['flow_net'](img, img.flip(-1))[0], flow_before)
    assert layout in str(report)


def test_data_parallel_prefix_bare_dict_and_float64_modules(keys_dir, tmp_path):
    state = random_state(keys_dir, 'keys_model_flow.txt', seed=4)
    path = tmp_path / 'dp.pth'
    torch.save({'model_state_dict': {'module.' + k: v for k, v in state.items()}}, path)
    net = FlowNet().double()
    report = load_original_checkpoint(path, flow_net=net)
    assert report.stripped_prefix == 'module.' and report.loaded == ('flow_net',)
    assert_holds(net, state)
    assert next(net.parameters()).dtype == torch.float64
    bare = tmp_path / 'bare.pth'
    torch.save(state, bare)
    assert load_original_checkpoint(bare, flow_net=FlowNet()).layout == 'Model_flow'


def broken_depth_state(keys_dir: Path) -> dict:
    state = random_state(keys_dir, 'keys_model_depth_pose.txt', seed=5)
    del state['depth_net.decoder.dispconvs.0.conv.bias']                         # missing
    state['depth_net.decoder.extra_head.weight'] = torch.zeros(3)                 # unexpected
    state['depth_net.encoder.encoder.conv1.weight'] = torch.zeros(64, 6, 7, 7)    # mis-shaped
    return state


def test_mismatch_names_missing_unexpected_and_mis_shaped_keys(keys_dir, tmp_path):
    state = broken_depth_state(keys_dir)
    sub = {k[len('depth_net.'):]: v for k, v in state.items() if k.startswith('depth_net.')}
    net = DepthNet()
    untouched = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(net, sub, 'my.pth')
    msg = str(err.value)
    assert 'my.pth' in msg and 'DepthNet' in msg
    assert 'missing (1): decoder.dispconvs.0.conv.bias' in msg
    assert 'unexpected (1): decoder.extra_head.weight' in msg
    assert 'encoder.encoder.conv1.weight expected (64, 3, 7, 7), got (64, 6, 7, 7)' in msg
    assert 'Fix:' in msg

    path = tmp_path / 'broken.pth'
    torch.save({'model_state_dict': state}, path)
    flow = FlowNet()
    flow_untouched = {k: v.clone() for k, v in flow.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_original_checkpoint(path, depth_net=net, flow_net=flow)
    msg = str(err.value)
    assert str(path) in msg
    for key in ('depth_net.decoder.dispconvs.0.conv.bias', 'depth_net.decoder.extra_head.weight',
                'depth_net.encoder.encoder.conv1.weight'):
        assert key in msg
    # nothing was copied into either network
    for module, ref in ((net, untouched), (flow, flow_untouched)):
        for key, value in module.state_dict().items():
            assert torch.equal(value, ref[key]), key


def test_listing_is_truncated_with_complete_counts(keys_dir):
    state = random_state(keys_dir, 'keys_pwc_tf.txt')
    for key in list(state)[:12]:
        del state[key]
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(PWCDecoder(), state, 'pwc.pth')
    msg = str(err.value)
    assert '12 missing' in msg and 'missing (12):' in msg and '(7 more)' in msg


def test_wrong_configuration_or_absent_network_is_explained(keys_dir, tmp_path):
    path = tmp_path / 'released.pth'
    torch.save({'model_state_dict': random_state(keys_dir, 'keys_model_depth_pose.txt')}, path)
    with pytest.raises(CheckpointError, match='num_disp_scales') as err:
        load_original_checkpoint(path, depth_net=DepthNet(num_disp_scales=4))
    assert 'depth_net.decoder.dispconvs.3.conv.weight' in str(err.value)
    with pytest.raises(CheckpointError, match='has no pose_net weights'):
        load_original_checkpoint(path, pose_net=FlowPoseNet())
    unknown = tmp_path / 'unknown.pth'
    state = random_state(keys_dir, 'keys_model_flow.txt')
    state['optimizer.lr'] = torch.tensor(1e-4)
    torch.save({'model_state_dict': state}, unknown)
    with pytest.raises(CheckpointError, match='optimizer.lr'):
        load_original_checkpoint(unknown, flow_net=FlowNet())


class NotAWeight:
    """A picklable object that ``weights_only=True`` must refuse."""


def test_unreadable_files_raise_checkpoint_error_naming_the_file(tmp_path):
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(b'this is not a zip or pickle file')
    missing = tmp_path / 'missing.pth'
    hostile = tmp_path / 'object.pth'
    torch.save({'model_state_dict': NotAWeight()}, hostile)
    wrong = tmp_path / 'list.pth'
    torch.save([torch.zeros(2)], wrong)
    no_state = tmp_path / 'no_state.pth'
    torch.save({'epoch': 3}, no_state)
    for path in (corrupt, missing, hostile, wrong, no_state):
        with pytest.raises(CheckpointError) as err:
            load_original_checkpoint(path, flow_net=FlowNet())
        assert str(path) in str(err.value) and 'Fix' in str(err.value)


def test_empty_file_says_it_is_empty(tmp_path):
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(CheckpointError) as err:
        load_original_checkpoint(empty, flow_net=FlowNet())
    assert str(empty) in str(err.value) and 'empty (0 bytes)' in str(err.value)
    assert 'Fix' in str(err.value)
