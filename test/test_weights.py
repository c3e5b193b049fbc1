"""
Weights and their stored configuration (``vo.providers.network_config``).

``trianflow-vo`` and the node take the network variant, input size and channel order from a
checkpoint's stored config; an explicit input size of the user wins.

A tiny checkpoint in the trainer's format (``make_checkpoint``: width 0.5, 64x192, RGB, random
weights) stands in for ``models/default.pth``; an original-layout file (random tensors with
the names and shapes of the released ``kitti_odo.pth``) stands in for the released weights.
"""

import os
from pathlib import Path
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from trianflow_ros.config import Config, dump_yaml, load_config
from trianflow_ros.nets.checkpoint import CheckpointError, state_dict_from_manifest
from trianflow_ros.nets.depth_net import DepthNet
from trianflow_ros.nets.flow_net import FlowNet
from trianflow_ros.ros.process import stop_process
from trianflow_ros.train.checkpoints import atomic_save, make_checkpoint
from trianflow_ros.vo import cli, providers
from trianflow_ros.vo.odometry import VisualOdometry

REPO = Path(__file__).resolve().parents[1]
KEYS = REPO.parent / 'shared' / 'reference' / 'checkpoint_keys' / 'keys_model_depth_pose.txt'
STORED_HW, STORED_WIDTH = (64, 192), 0.5


def stored_config() -> Config:
    """Return the configuration the tiny checkpoint was 'trained' with."""
    cfg = Config()
    cfg.data.img_height, cfg.data.img_width = STORED_HW
    cfg.data.bgr = False
    cfg.flow_net.width_mult = cfg.depth_net.width_mult = STORED_WIDTH
    cfg.depth_net.max_depth = 80.0
    return cfg


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Write a trainer checkpoint (model, Adam state, step, config YAML, rng) of the variant."""
    cfg = stored_config()
    torch.manual_seed(0)
    model = nn.Module()
    model.flow_net = FlowNet.from_config(cfg)
    model.depth_net = DepthNet.from_config(cfg)
    optimizer = torch.optim.Adam(model.parameters())
    ckpt = make_checkpoint(model=model, optimizer=optimizer, step=5, stage='depth',
                           config_yaml=dump_yaml(cfg), rng={'world_size': 1, 'ranks': []})
    return atomic_save(ckpt, tmp_path_factory.mktemp('weights') / 'tiny.pth')


@pytest.fixture(scope='module')
def original_checkpoint(tmp_path_factory) -> Path:
    """Write an original Model_depth_pose checkpoint (no stored config) with random tensors."""
    if not KEYS.is_file():
        if os.environ.get('CI'):
            pytest.fail(f'checkpoint manifest missing in CI: {KEYS}')
        pytest.skip(f'checkpoint manifest not found at {KEYS}')
    state = state_dict_from_manifest(KEYS, torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp('original') / 'kitti_odo.pth'
    torch.save({'model_state_dict': state}, path)
    return path


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory, write_image_folder):
    """Four synthetic frames of 96x320 and their intrinsics file."""
    root = tmp_path_factory.mktemp('frames')
    write_image_folder(root, 4, 96, 320, seed=3)
    return root


def widths(vo: VisualOdometry):
    """Return the width multipliers of the odometry's flow and depth networks (checked)."""
    for net, kind in ((vo.flow.net, FlowNet), (vo.depth.net, DepthNet)):
        built = kind(width_mult=net.width_mult)          # the sizes really are that variant's
        assert {k: v.shape for k, v in net.state_dict().items()} == \
            {k: v.shape for k, v in built.state_dict().items()}
    return vo.flow.net.width_mult, vo.depth.net.width_mult


def cli_args(*extra):
    """Parse ``trianflow-vo images`` arguments (nothing is run)."""
    return cli.build_parser().parse_args(['images', 'unused', '--intrinsics', 'unused',
                                          '--out', 'unused'] + list(extra))


def count_reads(monkeypatch):
    """Count the checkpoint file reads (``torch.load``) of the providers module."""
    monkeypatch.setattr(providers, '_HANDOVER', {})        # nothing kept from earlier tests
    reads = []
    real = providers.read_checkpoint_entries

    def counting(path):
        reads.append(Path(path))
        return real(path)

    monkeypatch.setattr(providers, 'read_checkpoint_entries', counting)
    return reads


# --------------------------------------------------------------------------------------------
def test_network_config_takes_the_stored_fields_and_keeps_explicit_sizes(tiny_checkpoint):
    user = load_config(REPO / 'config' / 'odo.yaml')          # 256x832, BGR, width 1
    cfg, notes = providers.network_config(tiny_checkpoint, user)
    assert (cfg.data.img_height, cfg.data.img_width) == STORED_HW
    assert cfg.data.bgr is False and cfg.depth_net.max_depth == 80.0
    assert cfg.flow_net.width_mult == cfg.depth_net.width_mult == STORED_WIDTH
    assert (user.data.img_height, user.data.bgr, user.flow_net.width_mult) == (256, True, 1.0)
    assert cfg.vo == user.vo and cfg.geometry == user.geometry       # nothing else changed
    assert len(notes) == 1 and str(tiny_checkpoint) in notes[0]
    assert 'data.img_width=192 (was 832)' in notes[0] and 'data.bgr=False (was True)' in notes[0]
    # an explicit input size wins; explicit values of other network fields do not
    cfg, notes = providers.network_config(tiny_checkpoint, user,
                                          explicit=['data.img_width', 'data.bgr'])
    assert (cfg.data.img_height, cfg.data.img_width, cfg.data.bgr) == (64, 832, False)
    assert "used instead of the checkpoint's: data.img_width=832 (checkpoint: 192)" in notes[1]
    assert 'ignored explicit setting(s) data.bgr=True' in notes[2]


def test_cli_runs_the_stored_variant_reading_the_file_once(tiny_checkpoint, image_folder,
                                                           tmp_path, capsys, monkeypatch):
    reads = count_reads(monkeypatch)
    args = cli_args('--flow', 'net', '--checkpoint', str(tiny_checkpoint),
                    '--config', str(REPO / 'config' / 'odo.yaml'))
    cfg = cli.resolve_config(args)
    vo = VisualOdometry(cfg)
    assert reads == [tiny_checkpoint]                    # network_config + both networks
    assert widths(vo) == (STORED_WIDTH, STORED_WIDTH)
    assert vo.flow.bgr is False and vo.depth.bgr is False and vo.depth.net.max_depth == 80.0
    assert vo.working_size((375, 1242)) == STORED_HW
    assert 'stored configuration of' in capsys.readouterr().err

    # end to end: the depth maps come out at the checkpoint's input size
    out = tmp_path / 'run'
    argv = ['images', str(image_folder), '--intrinsics', str(image_folder / 'K.txt'),
            '--quiet', '--flow', 'net', '--checkpoint', str(tiny_checkpoint), '--out', str(out)]
    assert cli.main(argv) == 0
    assert np.load(out / 'depth' / '000000.npy').shape == STORED_HW
    written = load_config(out / 'config.yaml')
    assert (written.data.img_height, written.data.img_width, written.data.bgr) == (64, 192, False)
    assert written.flow_net.width_mult == STORED_WIDTH
    assert 'data.img_width=192 (was 832)' in capsys.readouterr().err

    # --set of the input size wins over the checkpoint; other network fields do not
    out2 = tmp_path / 'run_set'
    assert cli.main(argv[:-1] + [str(out2), '--max-frames', '2', '--set', 'data.img_height=128',
                                 '--set', 'data.bgr=true']) == 0
    assert np.load(out2 / 'depth' / '000000.npy').shape == (128, 192)
    written = load_config(out2 / 'config.yaml')
    assert (written.data.img_height, written.data.img_width, written.data.bgr) == (128, 192, False)
    err = capsys.readouterr().err
    assert 'data.img_height=128 (checkpoint: 64)' in err and 'ignored' in err


def test_cli_keeps_the_user_config_for_an_original_checkpoint(original_checkpoint):
    args = cli_args('--flow', 'net', '--checkpoint', str(original_checkpoint),
                    '--config', str(REPO / 'config' / 'odo.yaml'), '--set', 'data.img_width=640')
    messages = []
    cfg = cli.resolve_config(args, log=messages.append)
    assert (cfg.data.img_height, cfg.data.img_width, cfg.data.bgr) == (256, 640, True)
    assert cfg.flow_net.width_mult == cfg.depth_net.width_mult == 1.0
    # (issue 12: a second note says the resize follows the original, cv2.INTER_LINEAR)
    assert len(messages) == 2 and 'no stored configuration' in messages[0]
    assert 'config/odo.yaml' in messages[0]
    assert cfg.vo.resize_interpolation == 'linear' and 'INTER_LINEAR' in messages[1]
    explicit = cli.resolve_config(cli_args(
        '--flow', 'net', '--checkpoint', str(original_checkpoint), '--config',
        str(REPO / 'config' / 'odo.yaml'), '--set', 'vo.resize_interpolation=area'),
        log=messages.append)
    assert explicit.vo.resize_interpolation == 'area'                  # the user's choice
    vo = VisualOdometry(cfg)
    assert widths(vo) == (1.0, 1.0) and vo.flow.bgr is True and vo.depth.bgr is True
    assert vo.flow.net.stored_config is None
    assert vo.working_size((375, 1242)) == (256, 640)


def test_checkpoint_default(tiny_checkpoint, image_folder, tmp_path, capsys, monkeypatch):
    missing = tmp_path / 'share' / 'models' / 'default.pth'
    monkeypatch.setattr(providers, 'default_checkpoint_candidates', lambda: [missing])
    with pytest.raises(CheckpointError) as e:
        providers.resolve_checkpoint('default')
    for text in (str(missing), 'models/default.pth', 'scripts/train_default_weights.sh',
                 'models/README.md'):
        assert text in str(e.value)
    argv = ['images', str(image_folder), '--intrinsics', str(image_folder / 'K.txt'), '--quiet',
            '--flow', 'net', '--checkpoint', 'default', '--max-frames', '2']
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv + ['--out', str(tmp_path / 'a')])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert str(missing) in err and 'train_default_weights.sh' in err
    assert not (tmp_path / 'a').exists()

    installed = tmp_path / 'installed' / 'default.pth'
    installed.parent.mkdir()
    installed.write_bytes(tiny_checkpoint.read_bytes())
    monkeypatch.setattr(providers, 'default_checkpoint_candidates', lambda: [missing, installed])
    assert providers.resolve_checkpoint('default') == installed
    assert cli.main(argv + ['--out', str(tmp_path / 'b')]) == 0
    written = load_config(tmp_path / 'b' / 'config.yaml')
    assert written.vo.checkpoint == str(installed)
    assert written.flow_net.width_mult == STORED_WIDTH and written.data.img_width == 192


# --------------------------------------------------------------------------------------------
class _Log:
    """A logger that keeps what the node would log."""

    def __init__(self):
        self.lines = []

    def info(self, text):
        self.lines.append(('info', text))

    warning = error = info


def test_node_build_takes_the_stored_config(ros_env, tiny_checkpoint, original_checkpoint,
                                            monkeypatch):
    from trianflow_ros.ros.vo_node import build_odometry, resolve_weights, StartupError
    reads = count_reads(monkeypatch)
    user = Config()                                          # node defaults: 256x832, BGR
    log = _Log()
    vo, info = build_odometry(user, str(tiny_checkpoint), 'cpu', False, log)
    assert reads == [tiny_checkpoint]
    assert (info['flow'], info['depth'], info['network_input']) == ('net', 'net', '192x64 rgb')
    assert widths(vo) == (STORED_WIDTH, STORED_WIDTH) and vo.flow.bgr is False
    assert (vo.cfg.data.img_height, vo.cfg.data.img_width) == STORED_HW
    assert any('stored configuration' in text for _, text in log.lines)
    # an explicit ROS parameter for the input size wins
    user.data.img_height = 128
    vo, info = build_odometry(user, str(tiny_checkpoint), 'cpu', False, _Log(),
                              explicit=['data.img_height'])
    assert info['network_input'] == '192x128 rgb' and widths(vo) == (0.5, 0.5)
    # an original checkpoint: the parameters as they are
    user = Config()
    user.data.img_width = 640
    vo, info = build_odometry(user, str(original_checkpoint), 'cpu', False, _Log())
    assert info['network_input'] == '640x256 bgr' and widths(vo) == (1.0, 1.0)
    # checkpoint:=default without models/default.pth: the error names the file and the fix
    monkeypatch.setattr(providers, 'default_checkpoint_candidates',
                        lambda: [Path('/nowhere/models/default.pth')])
    with pytest.raises(StartupError) as e:
        resolve_weights('default', Config())
    assert '/nowhere/models/default.pth' in str(e.value)
    assert 'train_default_weights.sh' in str(e.value) and "checkpoint:=''" in str(e.value)


def test_node_parameters_given_explicitly_win(ros_env, tiny_checkpoint):
    import rclpy
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from trianflow_ros.ros.params import NodeParameters
    from trianflow_ros.ros.vo_node import build_odometry
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(ros_env['ROS_DOMAIN_ID']))
    try:
        # data.img_height given with its default value still counts as explicit
        node = Node('vo_node', context=context, parameter_overrides=[
            Parameter('data.img_height', value=256), Parameter('checkpoint',
                                                               value=str(tiny_checkpoint))])
        params = NodeParameters(node)
        assert params.explicit_config_keys() == ['data.img_height']
        vo, info = build_odometry(params.config(), params['checkpoint'], 'cpu', False,
                                  _Log(), explicit=params.explicit_config_keys())
        assert info['network_input'] == '192x256 rgb'
        params.adopt(vo.cfg)
        later = params.config({'vo.num_matches': 500}, base=vo.cfg)   # a run-time change
        assert (later.data.img_height, later.data.img_width) == (256, 192)
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


@pytest.mark.ros
def test_node_logs_the_checkpoint_input_size(ros_env, tiny_checkpoint, tmp_path):
    runs = {}
    for name, extra in (('stored', []), ('explicit', ['-p', 'data.img_width:=256'])):
        log = open(tmp_path / f'{name}.out', 'w')
        cmd = [sys.executable, '-m', 'trianflow_ros.ros.vo_node', '--ros-args', '-r',
               f'__node:=vo_{name}', '-p', f'checkpoint:={tiny_checkpoint}', '-p',
               'device:=cpu'] + extra
        runs[name] = (subprocess.Popen(cmd, env=ros_env, stdout=log, stderr=subprocess.STDOUT,
                                       cwd=str(REPO)), log, tmp_path / f'{name}.out')
    try:
        end = time.monotonic() + 120
        for name, (proc, _, path) in runs.items():
            while 'visual odometry ready' not in path.read_text():
                assert proc.poll() is None, path.read_text()
                assert time.monotonic() < end, f'{name} node did not start'
                time.sleep(0.2)
    finally:
        for proc, log, _ in runs.values():
            stop_process(proc)
            log.close()
    texts = {name: path.read_text() for name, (_, _, path) in runs.items()}
    assert all(proc.returncode == 0 for proc, _, _ in runs.values()), texts
    assert 'working resolution=192x64 channels=rgb' in texts['stored'], texts['stored']
    assert 'data.img_height=64 (was 256)' in texts['stored'], texts['stored']
    assert 'working resolution=256x64 channels=rgb' in texts['explicit'], texts['explicit']
    assert 'data.img_width=256 (checkpoint: 192)' in texts['explicit'], texts['explicit']
