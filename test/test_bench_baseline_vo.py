"""The 30-line VO baseline of issue 12 (bench/baseline_vo.py): synthetic, real KITTI, CLI."""

import json
import os
from pathlib import Path

from bench_loader import load_bench
import numpy as np
import pytest
import torch

from trianflow_ros.data.synthetic import make_sequence
from trianflow_ros.geometry.distortion import distort_pixels, Distortion

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT.parent / 'shared' / 'data'
KITTI = DATA / 'kitti_odometry_seq06'


@pytest.fixture(scope='module')
def bench():
    """Import the bench script as a module (bench/ is not a package)."""
    return load_bench('baseline_vo')


def _require_kitti():
    if not KITTI.is_dir():
        message = f'benchmark data {KITTI} is absent'
        if os.environ.get('CI'):
            pytest.fail(message)
        pytest.skip(message)


def test_synthetic_forward_is_tracked(bench):
    """Exact scene, DIS flow: the unit-step trajectory matches after Sim(3) (measured 0.25 %)."""
    seq = make_sequence('forward', 8, 96, 320, seed=0)
    result = bench.baseline_vo(list(seq.images_uint8()), seq.K.numpy())
    assert result.poses.shape == (8, 4, 4) and result.lost == 0
    np.testing.assert_allclose(result.poses[0], np.eye(4))
    steps = np.linalg.norm(np.diff(result.poses[:, :3, 3], axis=0), axis=1)
    np.testing.assert_allclose(steps, 1.0, atol=1e-9)                  # unit steps
    gt = seq.poses.numpy()
    figures = bench.evaluate(result.poses, gt)
    length = np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1).sum()
    assert figures['ate'] < 0.01 * length, (figures, length)
    assert figures['rpe_rot'] < 0.3


def test_opencv_undistortion_matches_the_exact_model(bench):
    """The baseline's cv2 undistortion (P=K) inverts the project's forward model."""
    K = np.array([[400.0, 0.0, 320.0], [0.0, 410.0, 240.0], [0.0, 0.0, 1.0]])
    rng = np.random.default_rng(0)
    ideal = rng.uniform([60.0, 40.0], [580.0, 440.0], (200, 2))
    for dist in (Distortion('plumb_bob', (-0.2, 0.05, 0.001, -0.001, 0.0)),
                 Distortion('equidistant', (0.05, 0.01, 0.0, 0.0))):
        raw = distort_pixels(torch.from_numpy(ideal)[None], torch.from_numpy(K)[None],
                             dist)[0].numpy()
        back = bench._undistort(raw, K, dist)
        assert np.abs(back - ideal).max() < 0.05, dist   # measured 0.008 px (cv2: 5 steps)


def test_kitti_first_frames_and_determinism(bench):
    _require_kitti()
    from trianflow_ros.data.kitti_odometry import KittiOdometrySequence
    seq = KittiOdometrySequence(KITTI, '06', camera=0)
    frames = [seq.frame(i)[1] for i in range(6)]
    a = bench.baseline_vo(frames, seq.K)
    b = bench.baseline_vo(frames, seq.K)
    np.testing.assert_array_equal(a.poses, b.poses)                      # seeded
    figures = bench.evaluate(a.poses, seq.camera_poses[:6])
    assert a.lost == 0 and figures['ate'] < 0.05 and figures['rpe_rot'] < 0.2


def test_main_prints_one_json_line(bench, capsys):
    _require_kitti()
    assert bench.main(['kitti', str(KITTI), '--max-frames', '4']) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary['frames'] == 4 and summary['lost'] == 0
    assert {'ate', 'rpe_trans', 'rpe_rot', 'fps', 'undistorted'} <= set(summary)
    with pytest.raises(SystemExit) as e:
        bench.main(['tum', str(DATA / 'no_such_folder')])
    assert e.value.code == 2
