"""Which weights, which config wins (trianflow_ros.vo.factory): the rule without ROS."""

from pathlib import Path
import subprocess
import sys

import pytest

from trianflow_ros.config import Config
from trianflow_ros.nets.checkpoint import CheckpointError
from trianflow_ros.vo import cli, factory, providers

REPO = Path(__file__).resolve().parents[1]


class Log:
    """A logger that keeps what it was told."""

    def __init__(self):
        self.lines = []

    def info(self, text):
        self.lines.append(('info', text))

    def warning(self, text):
        self.lines.append(('warning', text))

    def error(self, text):
        self.lines.append(('error', text))


@pytest.fixture
def weights(tmp_path) -> Path:
    """Write a non-empty file that is not a checkpoint (the rule checks files first)."""
    path = tmp_path / 'w.pth'
    path.write_bytes(b'not a checkpoint')
    return path


def config_with(checkpoint: str = '') -> Config:
    cfg = Config()
    cfg.vo.checkpoint = checkpoint
    return cfg


def test_the_factory_imports_no_ros():
    code = ('import sys, trianflow_ros.vo.factory, trianflow_ros.vo.cli; '
            "assert not [m for m in sys.modules if m.startswith(('rclpy', 'rcl_'))]")
    subprocess.run([sys.executable, '-c', code], check=True, cwd=str(REPO))


def test_explicit_checkpoint_beats_the_config_which_beats_classical(weights, tmp_path):
    other = tmp_path / 'other.pth'
    other.write_bytes(b'x')
    assert factory.pick_weights(str(weights), config_with(str(other))) == \
        (str(weights), 'checkpoint parameter')
    assert factory.pick_weights('', config_with(str(other))) == (str(other), 'config_file')
    assert factory.pick_weights('', config_with()) == ('', factory.CLASSICAL_SOURCE)
    assert factory.resolve_weights(str(weights), config_with(str(other)))[0] == str(weights)
    assert factory.resolve_weights('', config_with(str(other))) == (str(other), 'config_file')
    assert factory.resolve_weights('', config_with())[0] == ''


def test_auto_providers_follow_the_weights():
    assert factory.choose_providers('w.pth') == ('net', 'net')
    assert factory.choose_providers('') == ('dis', 'none')
    assert factory.choose_providers('w.pth', 'dis', factory.AUTO) == ('dis', 'net')
    with pytest.raises(factory.MissingWeightsError) as e:
        factory.choose_providers('', 'net')
    assert (e.value.flow, e.value.depth) == ('net', 'none')


def test_default_names_the_shipped_file(weights, monkeypatch):
    monkeypatch.setattr(providers, 'default_checkpoint_candidates', lambda: [weights])
    assert factory.resolve_weights('default', config_with()) == \
        (str(weights), 'checkpoint parameter (default)')
    assert factory.resolve_weights('', config_with('default')) == \
        (str(weights), 'config_file (default)')
    missing = Path('/nowhere/models/default.pth')
    monkeypatch.setattr(providers, 'default_checkpoint_candidates', lambda: [missing])
    with pytest.raises(factory.StartupError) as e:
        factory.resolve_weights('default', config_with())
    assert str(missing) in str(e.value) and "checkpoint:=''" in str(e.value)
    assert 'train_default_weights.sh' in str(e.value)


@pytest.mark.parametrize('kind, text', [('missing', 'does not exist'),
                                        ('empty', 'is empty (0 bytes)'),
                                        ('dir', 'is a directory')])
def test_unusable_files_name_the_file_and_the_fix(tmp_path, kind, text):
    path = tmp_path / 'w.pth'
    if kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'dir':
        path.mkdir()
    with pytest.raises(factory.StartupError) as e:
        factory.resolve_weights(str(path), config_with())
    message = str(e.value)
    assert str(path) in message and text in message and '(checkpoint parameter)' in message
    assert "checkpoint:=''" in message and 'fallback_to_classical:=true' in message


def test_build_defaults_to_the_classical_pipeline():
    vo, info = factory.build_odometry(config_with(), '', 'cpu', False, Log())
    assert (info['flow'], info['depth'], info['weights']) == ('dis', 'none', '(none)')
    assert info['weights_source'] == 'classical pipeline'
    assert (vo.cfg.vo.flow_provider, vo.cfg.vo.depth_provider, vo.cfg.vo.checkpoint) == \
        ('dis', 'none', '')


def test_networks_without_weights_stop_even_with_fallback():
    with pytest.raises(factory.StartupError) as e:
        factory.build_odometry(config_with(), '', 'cpu', True, Log(), flow='net')
    assert 'vo.flow_provider=net' in str(e.value)
    assert 'checkpoint:=/path/to/weights.pth' in str(e.value)


def test_unusable_weights_stop_or_fall_back(tmp_path, weights):
    missing = tmp_path / 'missing.pth'
    with pytest.raises(factory.StartupError):
        factory.build_odometry(config_with(), str(missing), 'cpu', False, Log())
    with pytest.raises(factory.StartupError) as e:        # a corrupt file: read, then refused
        factory.build_odometry(config_with(), str(weights), 'cpu', False, Log())
    assert f"cannot load the weights '{weights}'" in str(e.value)
    assert 'fallback_to_classical:=true' in str(e.value)
    for path in (missing, weights):
        log = Log()
        vo, info = factory.build_odometry(config_with(), str(path), 'cpu', True, log)
        assert (info['flow'], info['depth'], info['weights']) == ('dis', 'none', '(none)')
        assert info['weights_source'] == 'fallback (classical)'
        errors = [text for level, text in log.lines if level == 'error']
        assert len(errors) == 1 and str(path) in errors[0]
        assert 'fallback_to_classical is true' in errors[0]
        assert vo.cfg.vo.checkpoint == ''


def test_the_cli_uses_the_same_rule(weights, tmp_path):
    def resolve(*extra):
        args = cli.build_parser().parse_args(['images', 'unused', '--intrinsics', 'unused',
                                              '--out', 'unused'] + list(extra))
        return cli.resolve_config(args, log=lambda _text: None)

    cfg = resolve()
    assert (cfg.vo.flow_provider, cfg.vo.depth_provider, cfg.vo.checkpoint) == ('dis', 'none', '')
    with pytest.raises(cli.CliError) as e:
        resolve('--flow', 'net')
    assert '--checkpoint PATH' in str(e.value)
    # the explicit checkpoint wins over the config's (then read: a corrupt file is refused)
    config = tmp_path / 'c.yaml'
    config.write_text('vo:\n  checkpoint: /nowhere/config.pth\n')
    with pytest.raises(CheckpointError) as e:
        resolve('--config', str(config), '--flow', 'net', '--checkpoint', str(weights))
    assert str(weights) in str(e.value)
    with pytest.raises(CheckpointError) as e:
        resolve('--config', str(config), '--flow', 'net')
    assert '/nowhere/config.pth' in str(e.value)
