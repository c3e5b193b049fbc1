"""The demo (``make demo``): player -> vo_node -> recorder over real DDS, all result files."""

import json
import os
from pathlib import Path
import subprocess
import sys

import cv2
import numpy as np
import pytest

from trianflow_ros.ros import demo

REPO = Path(__file__).resolve().parents[1]
NODE_FILE = REPO / 'trianflow_ros' / 'ros' / 'vo_node.py'


def test_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / 'demo'
    out.mkdir()
    (out / 'metrics.json').write_text('{}')
    assert demo.main(['--out', str(out), '--frames', '2']) == 1
    assert '--overwrite' in capsys.readouterr().err
    assert (out / 'metrics.json').read_text() == '{}'


def test_params_file_and_domain(tmp_path, monkeypatch):
    import yaml
    path = demo.write_params_file(tmp_path / 'p.yaml', {'vo.flow_provider': 'dis',
                                                        'data.img_height': 64, 'device': 'cpu'})
    tree = yaml.safe_load(path.read_text())['/**']['ros__parameters']
    assert tree == {'vo': {'flow_provider': 'dis'}, 'data': {'img_height': 64}, 'device': 'cpu'}
    monkeypatch.delenv('ROS_DOMAIN_ID', raising=False)
    assert 120 <= demo.pick_domain_id() < 220
    monkeypatch.setenv('ROS_DOMAIN_ID', '42')
    assert demo.pick_domain_id() == 42 and demo.pick_domain_id(7) == 7
    env = demo.ros_environment(42, {'ROS_DOMAIN_ID': '3'})
    assert env['ROS_DOMAIN_ID'] == '42' and env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'


@pytest.mark.ros
@pytest.mark.slow
def test_demo_smoke(tmp_path, ros_env):
    """8 small frames through the real node: every result file, sane metrics."""
    if not NODE_FILE.is_file():
        if os.environ.get('CI'):
            pytest.fail(f'{NODE_FILE} missing in CI')
        pytest.skip(f'the VO node ({NODE_FILE}) does not exist yet')
    out = tmp_path / 'demo'
    h, w = 96, 320
    cmd = [sys.executable, '-m', 'trianflow_ros.ros.demo', '--frames', '8', '--height', str(h),
           '--width', str(w), '--out', str(out), '--timeout', '150',
           '--param', f'data.img_height:={h}', '--param', f'data.img_width:={w}',
           '--param', 'device:=cpu']
    proc = subprocess.run(cmd, env=ros_env, capture_output=True, text=True, timeout=240,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ('poses_tum.txt', 'poses_kitti.txt', 'trajectory.png', 'metrics.json',
                 'depth_preview.png', 'node.log'):
        assert (out / name).is_file(), name
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics == last
    for key in ('ate', 'rpe_trans', 'rpe_rot', 'fps', 'frames'):
        assert metrics[key] is not None, key
    assert metrics['frames'] == 8 and metrics['frames_published'] == 8
    assert metrics['fps'] > 0 and metrics['ate'] < 0.5 and metrics['rpe_rot'] < 2.0
    assert metrics['domain_id'] == int(ros_env['ROS_DOMAIN_ID'])
    tum = np.loadtxt(out / 'poses_tum.txt')
    assert tum.shape == (8, 8)
    np.testing.assert_allclose(tum[:, 0], 1000 + np.arange(8) / 10.0, atol=1e-6)
    np.testing.assert_allclose(tum[0, 1:], [0, 0, 0, 0, 0, 0, 1], atol=1e-9)
    # forward driving: the camera moved along its z axis (the scale is the depth net's with the
    # shipped weights, the first step's with the classical pipeline: compare directions)
    print('demo final position', tum[-1, 1:4])
    assert tum[-1, 3] > 3.0 * np.abs(tum[-1, 1:3]).max()
    assert np.loadtxt(out / 'poses_kitti.txt').shape == (8, 12)
    depths = sorted((out / 'depth').glob('*.png'))
    assert 1 <= len(depths) <= 4
    d = cv2.imread(str(depths[0]), cv2.IMREAD_UNCHANGED)
    assert d.dtype == np.uint16 and d.shape == (h, w) and (d > 0).mean() > 0.3
    # a second run without --overwrite refuses and keeps the result
    again = subprocess.run(cmd, env=ros_env, capture_output=True, text=True, timeout=60,
                           cwd=REPO)
    assert again.returncode == 1 and '--overwrite' in again.stderr
    assert json.loads((out / 'metrics.json').read_text()) == metrics
