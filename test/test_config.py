"""The typed configuration tree: defaults, YAML files, overrides, validation, round trips."""

import dataclasses
from pathlib import Path

import pytest
from trianflow_ros import config as C
import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'config'


def test_every_field_has_help_and_a_checkable_default():
    specs = C.field_specs()
    assert len(specs) > 40
    for s in specs:
        assert s.description, f'{s.name} has no help text'
        assert s.value_type in (bool, int, float, str), s.name
        if s.bounds is not None:
            assert s.bounds[0] <= s.default <= s.bounds[1], s.name
        if s.choices is not None:
            assert s.default in s.choices, s.name
    C.validate(C.Config())


def test_default_yaml_is_the_dump_of_the_defaults():
    text = (CONFIG_DIR / 'default.yaml').read_text()
    assert yaml.safe_load(text) == C.to_dict(C.Config()), \
        'config/default.yaml is stale: regenerate it with trianflow-config > config/default.yaml'


@pytest.mark.parametrize('name', ['kitti', 'kitti_3stage', 'odo', 'odo_3stage', 'nyu',
                                  'nyu_3stage', 'tum'])
def test_dataset_files_load_and_round_trip(name, tmp_path):
    cfg = C.load_config(CONFIG_DIR / f'{name}.yaml')
    path = C.save_config(cfg, tmp_path / 'resolved.yaml')
    assert C.load_config(path) == cfg


def test_original_loss_weights_per_file():
    """Spot values of the original configs (reference notes, table 1.3)."""
    kitti3 = C.load_config(CONFIG_DIR / 'kitti_3stage.yaml')
    assert (kitti3.loss.w_geo, kitti3.loss.w_pt_depth, kitti3.loss.w_flow_error) == \
        (0.002, 0.0, 0.01)
    assert kitti3.data.dataset == 'kitti_raw' and kitti3.train.mode == 'depth_pose'
    odo = C.load_config(CONFIG_DIR / 'odo.yaml')
    assert (odo.loss.w_geo, odo.loss.w_depth_smooth) == (0.1, 1e-4)
    nyu = C.load_config(CONFIG_DIR / 'nyu.yaml')
    assert (nyu.data.img_height, nyu.data.img_width, nyu.loss.rigid_thres) == (448, 576, 1.0)
    assert nyu.flow_net.use_fb_check is False and nyu.train.num_iterations == 400000
    tum = C.load_config(CONFIG_DIR / 'tum.yaml')
    assert tum.data.dataset == 'tum' and tum.loss.rigid_thres == 1.0


def test_overrides_are_typed():
    cfg = C.load_config(None, ['train.lr=3e-4', 'train.batch_size=4', 'vo.device=cpu',
                               'flow_net.use_fb_check=false', 'geometry.ransac.threshold_px=1'])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.batch_size == 4
    assert cfg.vo.device == 'cpu'
    assert cfg.flow_net.use_fb_check is False
    assert cfg.geometry.ransac.threshold_px == 1.0
    assert isinstance(cfg.geometry.ransac.threshold_px, float)


@pytest.mark.parametrize('override, message', [
    ('train.lrr=1', "did you mean 'train.lr'"),
    ('data.img_height=3', 'out of range'),
    ('train.mode=banana', 'not one of'),
    ('train.batch_size=2.5', 'must be an integer'),
    ('flow_net.use_fb_check=3', 'true or false'),
    ('train.lr', 'section.key=value'),
    ('geometry.ransac=1', 'unknown config key'),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(C.ConfigError, match=message):
        C.load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(C.ConfigError, match='not found'):
        C.load_config(tmp_path / 'missing.yaml')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('train: {lr: [1, 2}\n')
    with pytest.raises(C.ConfigError, match='not valid YAML'):
        C.load_config(bad)
    unknown = tmp_path / 'unknown.yaml'
    unknown.write_text('trian: {lr: 1.0}\n')
    with pytest.raises(C.ConfigError, match="did you mean 'train'"):
        C.load_config(unknown)
    loop_a, loop_b = tmp_path / 'a.yaml', tmp_path / 'b.yaml'
    loop_a.write_text('base: b.yaml\n')
    loop_b.write_text('base: a.yaml\n')
    with pytest.raises(C.ConfigError, match='loop'):
        C.load_config(loop_a)


def test_base_files_chain_and_later_values_win(tmp_path):
    (tmp_path / 'parent.yaml').write_text('train: {lr: 0.5, batch_size: 2}\n')
    (tmp_path / 'child.yaml').write_text('base: parent.yaml\ntrain: {lr: 0.25}\n')
    cfg = C.load_config(tmp_path / 'child.yaml', ['train.batch_size=3'])
    assert (cfg.train.lr, cfg.train.batch_size) == (0.25, 3)


def test_save_refuses_to_overwrite(tmp_path):
    path = C.save_config(C.Config(), tmp_path / 'c.yaml')
    with pytest.raises(FileExistsError):
        C.save_config(C.Config(), path)
    cfg = C.load_config(None, ['train.seed=7'])
    C.save_config(cfg, path, overwrite=True)
    assert C.load_config(path).train.seed == 7


def test_flatten_matches_specs_and_sections_are_independent():
    flat = C.flatten(C.Config())
    assert flat['geometry.ransac.threshold_px'] == C.Config().geometry.ransac.threshold_px
    assert set(flat) == {s.name for s in C.field_specs()}
    a, b = C.Config(), C.Config()
    a.geometry.ransac.seed = 5
    assert b.geometry.ransac.seed == 0, 'sections must not be shared between instances'
    assert dataclasses.is_dataclass(a.geometry.pnp)


def test_cli_prints_resolved_yaml(capsys):
    assert C.main(['--config', str(CONFIG_DIR / 'odo.yaml'), '--set', 'train.seed=3']) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out['train']['seed'] == 3 and out['data']['dataset'] == 'kitti_odo'
    assert C.main(['--fields']) == 0
    assert 'geometry.ransac.threshold_px' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        C.main(['--set', 'nope.x=1'])
