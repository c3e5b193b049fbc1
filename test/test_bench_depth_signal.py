"""Smoke test of bench/depth_signal.py on the shipped weights (a few held-out pairs)."""

import json
import math

from bench_loader import load_bench


def test_depth_signal_bench_prints_one_json_line(capsys):
    bench = load_bench('depth_signal')
    assert bench.main(['--frames', '3', '--parallax', '0,1', '--threads', '1']) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures['pairs'] == 8                        # 2 seeds x 2 kinds x 2 pairs
    for sweep in ('learned', 'ground_truth_flow'):
        assert set(figures[sweep]) == {'0', '1'}
        for fig in figures[sweep].values():
            assert 0.0 <= fig['ok_share'] <= 1.0
            assert all(math.isfinite(fig[k]) for k in ('loss_gt', 'loss_constant', 'signal'))
    # with exact correspondences the loss tells the true depth from a constant by orders of
    # magnitude, and the parallax floor keeps fewer points
    reference = figures['ground_truth_flow']
    assert reference['0']['signal'] > 100.0
    assert reference['1']['points_per_pair'] < reference['0']['points_per_pair']
