"""Smoke test of bench/fps_832.py: a few KITTI frames, every runner, one JSON line last."""

import json
import os
from pathlib import Path

from bench_loader import load_bench
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT.parent / 'shared' / 'data'


def test_fps_832_reports_every_runner(capsys):
    if not (DATA / 'kitti_odometry_seq06').is_dir():
        message = f'benchmark data {DATA} is absent'
        if os.environ.get('CI'):
            pytest.fail(message)
        pytest.skip(message)
    bench = load_bench('fps_832')
    assert bench.main(['--frames', '5', '--repeats', '2']) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result['meta']['size'] == '832x256' and result['meta']['frames'] == 5
    assert set(result) == {'meta', 'baseline', 'dis', 'klt', 'klt_motion'}
    for name in ('baseline', 'dis', 'klt', 'klt_motion'):
        r = result[name]
        assert r['fps'] > 0 and len(r['fps_rounds']) == 2 and r['lost'] == 0
        assert r['ate'] >= 0.0
    assert result['baseline']['ratio_vs_baseline'] == pytest.approx(1.0)
