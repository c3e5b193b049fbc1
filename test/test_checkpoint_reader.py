"""The one checkpoint reader (trianflow_ros.nets.checkpoint.load / read_file)."""

import pytest
import torch

from trianflow_ros.config import Config, dump_yaml
from trianflow_ros.nets.checkpoint import CheckpointError, load, read_file


def test_load_returns_the_state_and_the_stored_config(tmp_path):
    state = {'flow_net.w': torch.ones(2), 'depth_net.b': torch.zeros(1)}
    cfg = Config()
    cfg.data.img_height = 64
    path = tmp_path / 'ours.pth'
    torch.save({'model_state_dict': {'module.' + k: v for k, v in state.items()},
                'config': dump_yaml(cfg), 'step': 3}, path)
    got, stored = load(path)
    assert sorted(got) == sorted(state) and stored.data.img_height == 64
    original = tmp_path / 'original.pth'
    torch.save({'model_state_dict': state}, original)
    assert load(original)[1] is None


def test_module_prefix_rule_is_strict_and_errors_name_the_file(tmp_path):
    mixed = tmp_path / 'mixed.pth'
    torch.save({'model_state_dict': {'module.a': torch.ones(1), 'b': torch.ones(1)}}, mixed)
    with pytest.raises(CheckpointError, match='mixes layouts'):
        load(mixed)
    bad = tmp_path / 'bad.pth'
    torch.save({'model_state_dict': {'a': torch.ones(1)}, 'config': 'data: [1'}, bad)
    with pytest.raises(CheckpointError, match='(?s)stored configuration is invalid.*re-save'):
        load(bad)
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(CheckpointError, match='is empty'):
        read_file(empty)
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(b'garbage')
    with pytest.raises(CheckpointError, match='cannot read checkpoint .*Fix: retrain'):
        read_file(corrupt, fix='retrain')
    with pytest.raises(CheckpointError, match='not found.*Fix: look'):
        read_file(tmp_path / 'nope.pth', not_found_fix='look')
