"""Smoke test of bench/node_latency.py: --quick through the real node, every figure present."""

import json
import os
from pathlib import Path
import subprocess
import sys

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
KITTI = REPO_ROOT.parent / 'shared' / 'data' / 'kitti_odometry_seq06'
SCRIPT = REPO_ROOT / 'bench' / 'node_latency.py'
RUN_KEYS = {'rate_hz', 'frames', 'processed', 'skipped', 'lost', 'with_odometry', 'fps',
            'latency_ms_mean', 'latency_ms_median', 'latency_ms_p95', 'latency_ms_max',
            'node_latency_ms_median', 'stage_ms', 'input_s', 'states', 'tracked'}


def test_missing_data_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), '--data', str(tmp_path / 'nothing')],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 2
    assert 'KITTI 06 not found' in proc.stderr and '--synthetic' in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.ros
@pytest.mark.slow
def test_quick_run_has_every_figure(ros_env):
    """8 frames at 10 Hz through the default node and the baseline; sane values only."""
    cmd = [sys.executable, str(SCRIPT), '--quick', '--domain-id', ros_env['ROS_DOMAIN_ID'],
           '--device', 'cpu']
    if not KITTI.is_dir():                      # the same check of the node on rendered frames
        if os.environ.get('CI'):
            pytest.fail(f'benchmark data {KITTI} is absent')
        cmd += ['--synthetic', '--height', '128', '--width', '416']
    proc = subprocess.run(cmd, env=ros_env, capture_output=True, text=True, timeout=420,
                          cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert any(line.startswith('| default (= classical) |') for line in lines), lines
    assert any(line.startswith('target ') for line in lines), lines
    result = json.loads(lines[-1])
    assert set(result) == {'baseline', 'runs', 'targets', 'meta'}
    assert result['meta']['quick'] and result['meta']['count'] == 8
    assert result['meta']['rates'] == [10.0] and result['meta']['configs'] == ['default']
    for name in ('native', '832x256'):
        b = result['baseline'][name]
        assert b['frames'] == 8 and b['fps'] > 0 and b['lost'] == 0, (name, b)
    assert result['baseline']['832x256']['res'] == '832x256'
    default = result['runs']['default']
    assert default['classical'] and default['label'] == 'default (= classical)'
    assert default['node']['flow'] == 'dis' and default['node']['depth'] == 'none'
    r = default['rates']['10']
    assert RUN_KEYS <= set(r), r
    assert r['frames'] == 7 and 1 <= r['processed'] <= 7                # the last one always
    assert r['processed'] + r['skipped'] == r['frames'] and 0 <= r['lost'] <= r['processed']
    assert r['fps'] > 0 and r['with_odometry'] >= 1 and '_totals' not in r
    assert 0 < r['latency_ms_median'] <= r['latency_ms_p95'] <= r['latency_ms_max']
    assert r['tracked'] + r['lost'] == r['processed']
    # stage times come from the tracked frames; on a very busy machine the few processed
    # frames may be far apart and all LOST (measured: none lost at 10 Hz, 4 of 5 at 30 Hz)
    if r['tracked']:
        assert r['stage_ms']['total'] > 0 and r['stage_ms']['flow'] > 0
        assert r['stage_ms']['depth'] == 0                               # no depth network
        assert default['vo_total_ms_median'] > 0 and default['vo_tracked_frames'] >= 1
    t = result['targets']
    assert set(t) == {'classical_vs_baseline_832', 'default_at_10hz'}
    assert t['classical_vs_baseline_832']['node_ratio'] > 0
    assert isinstance(t['default_at_10hz']['met'], bool)
