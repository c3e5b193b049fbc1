"""bench/tum_pair_floor.py: the metric-depth floor of the TUM fr1 pair; its bad-input answer."""

import json

from bench_loader import load_bench
import numpy as np
import pytest


def test_floor_on_the_real_pair(shared_data, capsys):
    bench = load_bench('tum_pair_floor')
    assert bench.main(['--data', str(shared_data), '--seeds', '3']) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res['matches'] > 500
    assert res['gt_trans_m'] == pytest.approx(0.0367, abs=1e-3)
    for name in ('raw', 'undistorted'):
        pnp, ess = res[name]['pnp'], res[name]['essential']
        assert len(pnp['dir_err_by_seed']) == 3 and len(ess['dir_err_by_seed']) == 3
        # metric depth fixes the scale: |t| within 10 % of the truth, rotation within 1 deg
        assert pnp['trans_m'] == pytest.approx(res['gt_trans_m'], rel=0.1)
        assert pnp['rot_err_deg'] < 1.0
        assert 0.0 <= pnp['dir_err_deg'] < 20.0 and np.isfinite(ess['dir_err_deg'])
    # the lens model of the TUM documentation fits the registered depth better than none
    assert res['undistorted']['pnp']['median_reproj_px'] < res['raw']['pnp']['median_reproj_px']


def test_missing_data_is_one_line_and_exit_2(tmp_path, capsys):
    bench = load_bench('tum_pair_floor')
    assert bench.main(['--data', str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and '--data' in err[0]
