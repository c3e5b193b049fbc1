"""``trianflow-vo`` end to end: an image folder (synthetic) and 6 frames of real KITTI seq 06."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from trianflow_ros.eval.trajectory_io import read_kitti, read_tum
from trianflow_ros.vo.cli import main

KITTI = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'kitti_odometry_seq06'


def last_json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory, write_image_folder):
    root = tmp_path_factory.mktemp('frames')
    return root, write_image_folder(root, 8, 96, 320, seed=1)


def test_images_subcommand_writes_every_output(image_folder, tmp_path, capsys):
    root, seq = image_folder
    out = tmp_path / 'run'
    argv = ['images', str(root), '--intrinsics', str(root / 'K.txt'), '--out', str(out),
            '--rate', '5', '--quiet', '--profile', '--flow', 'dis',
            '--set', 'vo.resolution=native',
            '--set', 'vo.num_matches=1000']
    assert main(argv) == 0
    captured = capsys.readouterr().out
    summary = json.loads(captured.strip().splitlines()[-1])
    assert 'stage' in captured and 'solver' in captured                   # --profile table
    assert summary['frames'] == 8 and summary['lost'] == 0
    assert summary['ate'] is None and summary['rpe_trans'] is None       # no ground truth
    assert summary['fps'] > 0 and set(summary['stage_ms']) >= {'flow', 'solver', 'total'}
    kitti = read_kitti(out / 'poses_kitti.txt')
    tum = read_tum(out / 'poses_tum.txt')
    assert len(kitti) == len(tum) == 8
    assert np.allclose(kitti.poses[0], np.eye(4))
    assert np.allclose(tum.stamps, np.arange(8) / 5.0)
    assert np.allclose(kitti.poses[:, :3, 3], tum.poses[:, :3, 3], atol=1e-6)
    # forward motion along +z in the camera frame of the first image
    assert kitti.poses[-1, 2, 3] > 3.0 * np.abs(kitti.poses[-1, :2, 3]).max()
    png = cv2.imread(str(out / 'depth' / '000003.png'), cv2.IMREAD_UNCHANGED)
    npy = np.load(out / 'depth' / '000003.npy')
    assert png.dtype == np.uint16 and png.shape == npy.shape == (96, 320)
    known = png > 0
    assert known.mean() > 0.2
    assert np.allclose(png[known] / 256.0, npy[known], atol=1.0 / 256)
    assert not (out / 'depth' / '000000.png').exists()                  # no depth yet
    assert (out / 'trajectory.png').stat().st_size > 0
    assert (out / 'config.yaml').exists() and (out / 'frames.csv').exists()
    assert not (out / 'metrics.json').exists()
    # existing results are not replaced without --overwrite
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert 'already holds results' in capsys.readouterr().err
    assert main(argv + ['--overwrite', '--stride', '2', '--no-depth-output']) == 0
    assert last_json(capsys)['frames'] == 4


def test_usage_errors_exit_2(image_folder, tmp_path, capsys):
    root, _ = image_folder
    base = ['images', str(root), '--intrinsics', str(root / 'K.txt'), '--quiet']
    with pytest.raises(SystemExit) as e:
        main(base + ['--out', str(tmp_path / 'a'), '--flow', 'net'])
    assert e.value.code == 2 and '--checkpoint' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(['images', str(tmp_path / 'missing'), '--intrinsics', str(root / 'K.txt'),
              '--out', str(tmp_path / 'b')])
    assert e.value.code == 2 and 'not found' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(base + ['--out', str(tmp_path / 'c'), '--set', 'vo.nope=1'])
    assert e.value.code == 2 and 'unknown config key' in capsys.readouterr().err


@pytest.mark.skipif(not KITTI.is_dir(), reason=f'shared KITTI data not found at {KITTI}')
def test_kitti_subcommand_on_six_real_frames(tmp_path, capsys):
    out = tmp_path / 'kitti'
    assert main(['kitti', str(KITTI), '--sequence', '06', '--max-frames', '6', '--out',
                 str(out), '--quiet', '--flow', 'dis', '--set', 'vo.num_matches=2000']) == 0
    summary = last_json(capsys)
    assert summary['frames'] == 6 and summary['lost'] == 0
    for name in ('poses_kitti.txt', 'poses_tum.txt', 'trajectory.png', 'metrics.json',
                 'frames.csv', 'config.yaml'):
        assert (out / name).exists(), name
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['align'] == 'sim3' and metrics['frames'] == 6
    # about 6 m driven straight ahead: the Sim(3)-aligned ATE is a few centimetres
    assert summary['ate'] is not None and summary['ate'] < 0.3
    assert summary['rpe_rot'] < 0.5
    tum = read_tum(out / 'poses_tum.txt')
    assert tum.stamps[1] == pytest.approx(0.1045, abs=1e-3)              # times.txt
    assert len(list((out / 'depth').glob('*.png'))) == 5
