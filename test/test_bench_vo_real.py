"""Smoke test of bench/vo_real.py: --quick runs on one synthetic sequence and the TUM pair."""

import json
import os
from pathlib import Path

from bench_loader import load_bench
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT.parent / 'shared' / 'data'
RUN_KEYS = {'frames', 'lost', 'ate', 'rpe_trans', 'rpe_rot', 'fps', 'res'}


@pytest.fixture(scope='module')
def bench():
    """Import the bench script as a module (bench/ is not a package)."""
    return load_bench('vo_real')


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_quick_synthetic_run_has_every_figure(bench, capsys, tmp_path):
    assert bench.main(['--quick', '--only', 'syn_forward', '--configs',
                       'classical,baseline,learned,default', '--no-progress',
                       '--out', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert '| syn forward | classical | 256x832 | 6 | 0 |' in out          # markdown table
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result) == {'meta', 'syn_forward'}
    assert result['meta']['quick'] and result['meta']['threads'] == 1
    runs = result['syn_forward']
    assert list(runs) == ['classical', 'baseline', 'learned', 'default']   # the order asked
    for config, r in runs.items():
        assert RUN_KEYS <= set(r), (config, r)
        assert r['frames'] == 6 and r['lost'] == 0 and r['fps'] > 0
    classical = runs['classical']
    assert 0.0 <= classical['ate'] < 0.05 and classical['rpe_rot'] < 0.2    # 64x208, ~5 m
    assert set(classical['stage_ms']) >= {'flow', 'select', 'solver', 'scale', 'total'}
    assert runs['baseline']['res'] == '64x208 native' and 'stage_ms' not in runs['baseline']
    # trianflow-vo's default since issue 12: the classical pipeline, i.e. its run, reused
    assert runs['default']['same_as'] == 'classical'
    assert runs['default']['ate'] == runs['classical']['ate']
    assert (tmp_path / 'syn_forward' / 'classical' / 'poses_kitti.txt').exists()


def test_tum_pair_gives_relative_pose_errors(bench, capsys):
    if not (DATA / 'tum_rgbd_pairs').is_dir():
        message = f'benchmark data {DATA} is absent'
        if os.environ.get('CI'):
            pytest.fail(message)
        pytest.skip(message)
    assert bench.main(['--quick', '--only', 'tum_fr1_pair', '--configs',
                       'baseline,baseline_raw', '--no-progress']) == 0
    runs = last_json(capsys)['tum_fr1_pair']
    for config in ('baseline', 'baseline_raw'):
        r = runs[config]
        assert r['ate'] is None and r['frames'] == 2
        assert r['gt_rot_deg'] == pytest.approx(2.17, abs=0.01)
        assert 0.0 <= r['rot_err_deg'] < 2.0 and 0.0 <= r['dir_err_deg'] < 45.0
    assert runs['baseline']['undistorted'] and not runs['baseline_raw']['undistorted']


def test_bad_options_exit_2(bench, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(['--configs', 'classical,magic'])
    assert e.value.code == 2 and 'magic' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        bench.main(['--only', 'kitti07'])
    assert e.value.code == 2 and 'kitti07' in capsys.readouterr().err


def test_sparse_front_end_configs_run_without_dense_flow(bench, capsys, tmp_path):
    assert bench.main(['--quick', '--only', 'syn_forward', '--configs',
                       'classical_klt,classical_klt_motion', '--no-progress',
                       '--out', str(tmp_path)]) == 0
    runs = last_json(capsys)['syn_forward']
    assert list(runs) == ['classical_klt', 'classical_klt_motion']
    for config, r in runs.items():
        assert r['frames'] == 6 and r['lost'] == 0 and r['res'] == '256x832', (config, r)
        # measured: 0.053 m of a ~5 m path started by DIS (the dense classical: < 0.05)
        assert 0.0 <= r['ate'] < 0.1 and r['rpe_rot'] < 0.2, (config, r)
    # the DIS start counts as flow; the motion start computes it for the first pair only
    stages = {config: r['stage_ms'] for config, r in runs.items()}
    assert 0 < stages['classical_klt_motion']['flow'] < stages['classical_klt']['flow']
