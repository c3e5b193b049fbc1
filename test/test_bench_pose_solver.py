"""Smoke test of bench/pose_solver.py on the first three frame pairs of KITTI seq 06."""

import json
import math
import os
from pathlib import Path

from bench_loader import load_bench
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT.parent / 'shared' / 'data'
JSON_KEYS = ('rot_err_deg_ours', 'rot_err_deg_opencv', 'tdir_err_deg_ours',
             'tdir_err_deg_opencv', 'ms_ours', 'ms_opencv', 'speedup')


@pytest.fixture(scope='module')
def bench():
    """Import the bench script as a module (bench/ is not a package)."""
    if not (DATA / 'kitti_odometry_seq06').is_dir():
        message = f'benchmark data {DATA / "kitti_odometry_seq06"} is absent'
        if os.environ.get('CI'):
            pytest.fail(message)
        pytest.skip(message)
    return load_bench('pose_solver')


@pytest.fixture(scope='module')
def sequence(bench):
    """Load the first four frames of the sequence."""
    return bench.load_sequence(DATA, num_frames=4)


@pytest.fixture(scope='module')
def pairs(bench, sequence):
    """Build the matches of the first three consecutive frame pairs."""
    return bench.build_pairs(sequence, bench.frame_pairs(4, 1), num_points=5000,
                             progress=False)


def test_sequence(sequence):
    """K comes from P0 and the poses are rigid 4x4 matrices."""
    assert sequence.images[0].shape == (370, 1226)
    assert sequence.K.shape == (3, 3)
    assert sequence.K[0, 0] == pytest.approx(707.0912)
    assert sequence.poses.shape == (4, 4, 4)
    np.testing.assert_allclose(sequence.poses[:, 3], [[0, 0, 0, 1]] * 4)


def test_correspondences(bench, sequence, pairs):
    """Matches have the requested count, lie inside both images and are reproducible."""
    height, width = sequence.images[0].shape
    assert [(p.i, p.j) for p in pairs] == [(0, 1), (1, 2), (2, 3)]
    for p in pairs:
        assert p.x1.shape == p.x2.shape == (5000, 2)
        assert p.num_valid >= 5000
        for x in (p.x1, p.x2):
            assert np.all(x >= 0)
            assert np.all(x[:, 0] <= width - 1)
            assert np.all(x[:, 1] <= height - 1)
        assert np.unique(p.x1, axis=0).shape[0] == 5000  # drawn without replacement
    first = pairs[0]
    x1, x2, _ = bench.flow_correspondences(sequence.images[0], sequence.images[1], 5000,
                                           np.random.default_rng((0, 0, 1)))
    np.testing.assert_array_equal(x1, first.x1)
    np.testing.assert_array_equal(x2, first.x2)


def test_both_solvers(bench, sequence, pairs):
    """Both solvers run on identical matches; rotation errors are finite and below 2 deg."""
    result = bench.run_stride(pairs, sequence.K, repeats=1, progress=False)
    for key in ('rot_opencv', 'tdir_opencv', 'ms_opencv', 'rot_ours', 'tdir_ours', 'ms_ours'):
        assert len(result[key]) == 3, key
    for key in ('rot_opencv', 'rot_ours'):
        assert all(math.isfinite(e) and e < 2.0 for e in result[key]), (key, result[key])
    summary = bench.summarize(result)
    table = bench.format_table({1: summary})
    assert 'ours (B=1)' in table and 'OpenCV (1 call)' in table
    assert summary['ms_ours'] > 0 and summary['ms_opencv'] > 0


def test_main_prints_json_last(bench, capsys):
    """The script's last printed line is one JSON object with the documented keys."""
    bench.main(['--quick', '1', '--strides', '1', '--points', '2000', '--repeats', '1',
                '--batch', '--no-progress'])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    line = json.loads(last)
    for key in JSON_KEYS:
        assert math.isfinite(line[key]), key
    assert line['pairs'] == 1 and line['ms_ours_batch'] > 0
    assert line['rot_err_max_deg_ours'] < 2.0 and line['rot_err_max_deg_opencv'] < 2.0
