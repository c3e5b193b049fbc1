"""Smoke test of bench/learning.py (``--quick``: a few steps of every stage)."""

import json
import math

from bench_loader import load_bench
import pytest


@pytest.mark.slow
def test_learning_bench_quick_prints_one_json_line(shared_data, capsys, tmp_path):
    bench = load_bench('learning')
    kitti = shared_data / 'kitti_odometry_seq06'
    assert bench.main(['--quick', '--kitti', str(kitti), '--out', str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(lines[-1])
    for key in ('flow_epe_untrained', 'flow_epe_trained', 'epe_factor',
                'depth_absrel_untrained', 'depth_absrel_trained', 'kitti_photo_before',
                'kitti_photo_after', 'kitti_epipolar_before', 'kitti_epipolar_after',
                'kitti_epipolar_dis', 'kitti_epipolar_rel_dis', 'depth_absrel_constant',
                'seconds'):
        assert math.isfinite(figures[key]) and figures[key] >= 0.0, key
    assert figures['quick'] is True
    assert (tmp_path / 'syn_flow' / 'last.pth').is_file()
    assert (tmp_path / 'syn_depth' / 'last.pth').is_file()
    assert (tmp_path / 'kitti_flow' / 'metrics.jsonl').is_file()
