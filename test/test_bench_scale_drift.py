"""bench/scale_drift.py: exact on a known drift; a short run reports both kinds."""

import json

from bench_loader import load_bench
import numpy as np
import pytest


def _bench():
    return load_bench('scale_drift')


def _path(steps: np.ndarray) -> np.ndarray:
    poses = np.repeat(np.eye(4)[None], len(steps) + 1, axis=0)
    poses[1:, 2, 3] = np.cumsum(steps)
    return poses


@pytest.mark.parametrize('drift', [-3.0, 0.0, 2.5])
def test_drift_is_the_slope_of_the_log_step_ratio(drift):
    bench = _bench()
    true = 0.8 + 0.3 * np.sin(np.arange(120) / 7.0)                 # varying speed
    est = 0.37 * true * np.exp(drift / 1e4 * np.arange(120))        # drift % per 100 frames
    assert bench.drift_per_100(_path(est), _path(true)) == pytest.approx(drift, abs=1e-9)
    # a standstill (true step 0) is left out, not divided by
    true[50:60] = 0.0
    est[50:60] = 0.001
    assert bench.drift_per_100(_path(est), _path(true)) == pytest.approx(drift, abs=1e-9)


def test_short_run_reports_both_kinds(capsys):
    bench = _bench()
    assert bench.main(['--frames', '6']) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result['meta']['frames'] == 6 and set(result) == {'meta', 'forward', 'turns'}
    for kind in ('forward', 'turns'):
        r = result[kind]
        assert r['lost'] == 0 and r['path_m'] > 3.0
        assert r['ate'] >= 0.0 and r['baseline_ate'] >= 0.0
        assert np.isfinite(r['drift_pct_per_100'])


def test_too_few_frames_is_a_usage_error(capsys):
    assert _bench().main(['--frames', '2']) == 2
    assert 'at least 4' in capsys.readouterr().err


def test_unknown_kind_is_a_usage_error(capsys):
    assert _bench().main(['--kinds', 'forward,bogus']) == 2
    assert "unknown kind 'bogus'" in capsys.readouterr().err
