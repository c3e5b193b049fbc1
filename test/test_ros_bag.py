"""Bag tools: trianflow-bag writes rosbag2 (read back with rosbags), trianflow-play replays it."""

import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from rosbags.typesys import get_typestore, Stores

from trianflow_ros.ros import bag as bagmod

REPO = Path(__file__).resolve().parents[1]
TS = get_typestore(Stores.ROS2_KILTED)
KITTI = 'kitti_odometry_seq06'
TUM = 'tum_rgbd_pairs/rgbd_dataset_freiburg1_xyz'


def read_bag(path):
    """Return {topic: [(bag_ns, msg)]} and {topic: connection} of a rosbag2 folder."""
    out, conns = {}, {}
    with Reader(path) as reader:
        for c in reader.connections:
            conns[c.topic] = c
        for c, t, raw in reader.messages():
            out.setdefault(c.topic, []).append((t, TS.deserialize_cdr(raw, c.msgtype)))
    return out, conns


def ns(stamp):
    return stamp.sec * 10 ** 9 + stamp.nanosec


def image_array(msg):
    channels = {'mono8': 1, 'rgb8': 3}[msg.encoding]
    a = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.width, channels)
    return a[:, :, 0] if channels == 1 else a


def pose_of(msg_pose):
    from trianflow_ros.geometry.lie import quaternion_to_matrix
    q = msg_pose.orientation
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(np.array([q.x, q.y, q.z, q.w]))
    T[:3, 3] = [msg_pose.position.x, msg_pose.position.y, msg_pose.position.z]
    return T


def check_common(msgs, conns, n, stamps_ns, K, gt_cam=None):
    """Check counts, stamps, CameraInfo, /tf_static latching and the ground truth."""
    assert len(msgs['/camera/image_raw']) == n
    assert len(msgs['/camera/camera_info']) == n
    assert len(msgs['/tf_static']) == 1
    assert [ns(m.header.stamp) for _, m in msgs['/camera/image_raw']] == list(stamps_ns)
    assert [t for t, _ in msgs['/camera/image_raw']] == list(stamps_ns)   # bag time = stamp
    for (_, img), (_, info) in zip(msgs['/camera/image_raw'], msgs['/camera/camera_info']):
        assert ns(info.header.stamp) == ns(img.header.stamp)
        assert info.header.frame_id == img.header.frame_id == bagmod.CAMERA_FRAME
        assert (info.height, info.width) == (img.height, img.width)
        np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3), K, rtol=0, atol=1e-12)
        assert info.distortion_model == 'plumb_bob' and len(info.d) == 5
    (tf_static,) = [m for _, m in msgs['/tf_static']]
    tr = tf_static.transforms[0]
    assert (tr.header.frame_id, tr.child_frame_id) == ('base_link', bagmod.CAMERA_FRAME)
    q = tr.transform.rotation
    np.testing.assert_allclose([q.x, q.y, q.z, q.w], [-0.5, 0.5, -0.5, 0.5], atol=1e-12)
    qos = conns['/tf_static'].ext.offered_qos_profiles
    assert qos and qos[0].durability.name == 'TRANSIENT_LOCAL'
    if gt_cam is None:
        assert '/ground_truth/odom' not in msgs
        return
    odom = [m for _, m in msgs['/ground_truth/odom']]
    assert len(odom) == n and len(msgs['/tf']) == n
    T_bc = bagmod.T_BASE_OPTICAL
    for m, T_cam in zip(odom, gt_cam):
        assert (m.header.frame_id, m.child_frame_id) == ('world', 'ground_truth/base_link')
        T_rel = np.linalg.inv(gt_cam[0]) @ T_cam
        back = np.linalg.inv(T_bc) @ pose_of(m.pose.pose) @ T_bc
        np.testing.assert_allclose(back, T_rel, atol=1e-9)


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_kitti_bag(tmp_path, shared_data, storage):
    from trianflow_ros.data.kitti_odometry import KittiOdometrySequence
    root = shared_data / KITTI
    out = tmp_path / 'kitti'
    assert bagmod.main(['kitti', str(root), '--sequence', '06', '--camera', '0',
                        '--max-frames', '5', '--storage', storage, '-o', str(out)]) == 0
    assert list(out.glob('*.mcap' if storage == 'mcap' else '*.db3'))
    seq = KittiOdometrySequence(root, '06', camera=0)
    msgs, conns = read_bag(out)
    stamps = [bagmod.seconds_to_ns(t) for t in seq.times[:5]]
    check_common(msgs, conns, 5, stamps, seq.K, seq.camera_poses[:5])
    for i, (_, img) in enumerate(msgs['/camera/image_raw']):
        assert img.encoding == 'mono8'
        src = cv2.imread(str(seq.image_path(i)), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(image_array(img), src)


def test_kitti_stride_camera2_missing(tmp_path, shared_data):
    """--stride picks every N-th frame; a missing camera folder is a clear error (exit 2)."""
    root = shared_data / KITTI
    out = tmp_path / 'b'
    assert bagmod.main(['kitti', str(root), '--sequence', '06', '--stride', '3',
                        '--max-frames', '3', '-o', str(out)]) == 0
    msgs, _ = read_bag(out)
    from trianflow_ros.data.kitti_odometry import KittiOdometrySequence
    seq = KittiOdometrySequence(root, '06', camera=0)
    assert [ns(m.header.stamp) for _, m in msgs['/camera/image_raw']] == \
        [bagmod.seconds_to_ns(seq.times[i]) for i in (0, 3, 6)]
    with pytest.raises(SystemExit) as e:
        bagmod.main(['kitti', str(root), '--sequence', '06', '--camera', '2',
                     '-o', str(tmp_path / 'c')])
    assert e.value.code == 2
    assert not (tmp_path / 'c').exists()


def test_tum_bag(tmp_path, shared_data):
    from trianflow_ros.data.tum import TumRgbdSequence
    path = shared_data / TUM
    out = tmp_path / 'tum'
    assert bagmod.main(['tum', str(path), '--storage', 'sqlite3', '-o', str(out)]) == 0
    seq = TumRgbdSequence(path, use_depth=False)
    msgs, conns = read_bag(out)
    n = len(seq)
    stamps = [bagmod.seconds_to_ns(t) for t in seq.stamps]
    # the text of rgb.txt, exactly
    first = next(line for line in (path / 'rgb.txt').read_text().splitlines()
                 if line and not line.startswith('#')).split()[0]
    whole, frac = first.split('.')
    assert stamps[0] == int(whole) * 10 ** 9 + int(frac.ljust(9, '0'))
    check_common(msgs, conns, n, stamps, seq.K, seq.poses)
    for i, (_, img) in enumerate(msgs['/camera/image_raw']):
        assert img.encoding == 'rgb8'
        src = cv2.cvtColor(cv2.imread(str(seq.rgb_paths[i]), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB)
        assert np.array_equal(image_array(img), src)
    info = msgs['/camera/camera_info'][0][1]
    np.testing.assert_allclose(info.d, bagmod.TUM_DISTORTION['fr1'])


def test_synthetic_bag(tmp_path):
    from trianflow_ros.data.synthetic import make_sequence
    out = tmp_path / 'syn'
    assert bagmod.main(['synthetic', '--frames', '4', '--height', '48', '--width', '160',
                        '--rate', '20', '-o', str(out)]) == 0
    seq = make_sequence('forward', 4, 48, 160, seed=0)
    msgs, conns = read_bag(out)
    stamps = [1000 * 10 ** 9 + i * 50_000_000 for i in range(4)]
    check_common(msgs, conns, 4, stamps, seq.K.double().numpy(), seq.poses.double().numpy())
    images = seq.images_uint8()
    for i, (_, img) in enumerate(msgs['/camera/image_raw']):
        assert img.encoding == 'rgb8'
        assert np.array_equal(image_array(img), images[i])


def test_kitti_raw_bag(tmp_path):
    """A two-frame drive in the KITTI raw layout (made here)."""
    date = tmp_path / '2011_09_26'
    drive = date / '2011_09_26_drive_0001_sync'
    data = drive / 'image_02' / 'data'
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (24, 40, 3), dtype=np.uint8) for _ in range(2)]
    for i, im in enumerate(imgs):
        cv2.imwrite(str(data / f'{i:010d}.png'), im[:, :, ::-1])
    (drive / 'image_02' / 'timestamps.txt').write_text(
        '2011-09-26 13:02:25.964389445\n2011-09-26 13:02:26.068074489\n')
    (date / 'calib_cam_to_cam.txt').write_text(
        'calib_time: 09-Jan-2012 13:57:47\n'
        'P_rect_02: 7.215377e+02 0 6.095593e+02 4.485728e+01 0 7.215377e+02 1.728540e+02 '
        '2.163791e-01 0 0 1 2.745884e-03\n')
    out = tmp_path / 'raw'
    assert bagmod.main(['kitti-raw', str(drive), '-o', str(out)]) == 0
    msgs, _ = read_bag(out)
    assert len(msgs['/camera/image_raw']) == 2 and '/ground_truth/odom' not in msgs
    for i, (_, img) in enumerate(msgs['/camera/image_raw']):
        assert np.array_equal(image_array(img), imgs[i])
    t = [ns(m.header.stamp) for _, m in msgs['/camera/image_raw']]
    assert t[1] - t[0] == pytest.approx(103_685_044, abs=500)
    k = np.asarray(msgs['/camera/camera_info'][0][1].k).reshape(3, 3)
    assert k[0, 0] == pytest.approx(721.5377) and k[0, 2] == pytest.approx(609.5593)


def test_refuses_overwrite(tmp_path, capsys):
    out = tmp_path / 'b'
    args = ['synthetic', '--frames', '2', '--height', '16', '--width', '32', '-o', str(out)]
    assert bagmod.main(args) == 0
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(SystemExit) as e:
        bagmod.main(args)
    assert e.value.code == 2 and '--overwrite' in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    assert bagmod.main(args + ['--overwrite', '--storage', 'sqlite3']) == 0
    assert list(out.glob('*.db3')) and not list(out.glob('*.mcap'))
    # never deletes a folder that is not a bag
    other = tmp_path / 'notes'
    other.mkdir()
    (other / 'keep.txt').write_text('x')
    with pytest.raises(SystemExit):
        bagmod.main(args[:-1] + [str(other), '--overwrite'])
    assert (other / 'keep.txt').is_file()


def _stop(proc, timeout=15):
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out, err


@pytest.mark.ros
def test_play_into_live_topics(tmp_path, ros_env):
    """trianflow-play: every image arrives, in order, intact, at the recorded pace."""
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_msgs.msg import TFMessage

    n, rate = 12, 10.0
    out = tmp_path / 'syn'
    source = bagmod.synthetic_source('forward', n, 32, 96, rate=rate)
    bagmod.write_bag(source, out)
    images = [f.image for f in source.frames()]

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(ros_env['ROS_DOMAIN_ID']))
    node = Node('play_listener', context=context)
    got, infos, statics = [], [], []
    reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(Image, '/camera/image_raw',
                             lambda m: got.append((time.monotonic(), m)), reliable)
    node.create_subscription(CameraInfo, '/camera/camera_info', infos.append, reliable)
    player = subprocess.Popen(
        [sys.executable, '-m', 'trianflow_ros.ros.player', str(out), '--rate', '1.0',
         '--wait-for-subscribers', '1', '--wait-topics', '/camera/image_raw',
         '/camera/camera_info', '--linger', '1'],
        env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + 40
        while (len(got) < n or len(infos) < n) and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        # a late joiner still gets the latched /tf_static
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(TFMessage, '/tf_static', statics.append, latched)
        deadline = time.monotonic() + 10
        while not statics and time.monotonic() < deadline and player.poll() is None:
            executor.spin_once(timeout_sec=0.05)
        out_text, err = player.communicate(timeout=30)
    finally:
        _stop(player)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    assert player.returncode == 0, err[-2000:]
    summary = json.loads(out_text.strip().splitlines()[-1])
    assert summary['messages']['/camera/image_raw'] == n
    assert len(got) == n, f'received {len(got)} of {n}'
    assert len(infos) == n
    for i, (_, m) in enumerate(got):
        assert ns(m.header.stamp) == 1000 * 10 ** 9 + i * 100_000_000
        assert np.array_equal(np.frombuffer(bytes(m.data), np.uint8).reshape(32, 96, 3),
                              images[i])
    gaps = np.diff([t for t, _ in got])
    assert 0.07 < float(np.median(gaps)) < 0.15, gaps
    assert 0.9 * (n - 1) / rate < got[-1][0] - got[0][0] < 2.5 * (n - 1) / rate
    assert statics and statics[0].transforms[0].child_frame_id == bagmod.CAMERA_FRAME


@pytest.mark.ros
def test_record_bag_and_trajectory(tmp_path, ros_env):
    """trianflow-record writes what trianflow-play publishes (bag and trajectory modes)."""
    n = 6
    src = tmp_path / 'syn'
    source = bagmod.synthetic_source('forward', n, 24, 64, rate=20.0)
    bagmod.write_bag(source, src)
    rec_bag, traj_dir = tmp_path / 'rec', tmp_path / 'traj'
    recorder = subprocess.Popen(
        [sys.executable, '-m', 'trianflow_ros.ros.recorder', '-o', str(rec_bag), '--topics',
         '/camera/image_raw', '/camera/camera_info', '--trajectory', str(traj_dir),
         '--odom-topic', '/ground_truth/odom', '--frame', 'base', '--depth-topic', ''],
        env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        player = subprocess.run(
            [sys.executable, '-m', 'trianflow_ros.ros.player', str(src),
             '--wait-for-subscribers', '1', '--wait-topics', '/camera/image_raw',
             '/camera/camera_info', '/ground_truth/odom', '--wait-timeout', '40'],
            env=ros_env, capture_output=True, text=True, timeout=90)
        assert player.returncode == 0, player.stderr[-2000:]
    finally:
        out, err = _stop(recorder)
    assert recorder.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary['bag']['messages'] == {'/camera/image_raw': n, '/camera/camera_info': n}
    assert summary['trajectory']['odometry'] == n
    played, _ = read_bag(src)
    recorded, _ = read_bag(rec_bag)
    assert [TS.serialize_cdr(m, 'sensor_msgs/msg/Image').tobytes()
            for _, m in recorded['/camera/image_raw']] == \
        [TS.serialize_cdr(m, 'sensor_msgs/msg/Image').tobytes()
         for _, m in played['/camera/image_raw']]
    from trianflow_ros.eval.trajectory_io import read_tum
    traj = read_tum(traj_dir / 'poses_tum.txt')
    gt = [pose_of(m.pose.pose) for _, m in played['/ground_truth/odom']]
    np.testing.assert_allclose(traj.poses, np.stack(gt), atol=1e-6)
    np.testing.assert_allclose(traj.stamps, 1000 + np.arange(n) / 20.0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# round trip with the real node
# --------------------------------------------------------------------------------------------

NODE_FILE = REPO / 'trianflow_ros' / 'ros' / 'vo_node.py'


@pytest.mark.ros
@pytest.mark.slow
def test_round_trip_node_equals_offline(tmp_path, ros_env):
    """Bag -> trianflow-play -> vo_node -> odom equals trianflow-vo on the same frames."""
    if not NODE_FILE.is_file():
        if os.environ.get('CI'):
            pytest.fail(f'{NODE_FILE} missing in CI')
        pytest.skip(f'the VO node ({NODE_FILE}) does not exist yet')
    from trianflow_ros.eval.trajectory_io import read_tum
    from trianflow_ros.ros.demo import run_pipeline
    from trianflow_ros.vo.cli import main as vo_main

    n, h, w = 10, 96, 320
    source = bagmod.synthetic_source('forward', n, h, w, rate=10.0)
    frames = list(source.frames())
    # offline: trianflow-vo on the same frames as an image folder (PNG is lossless)
    img_dir = tmp_path / 'images'
    img_dir.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(img_dir / f'{i:06d}.png'), f.image[:, :, ::-1])
    K = frames[0].K
    (img_dir.parent / 'K.txt').write_text(' '.join(repr(float(v)) for v in K.reshape(-1)))
    offline = tmp_path / 'offline'
    sets = ['--set', f'data.img_height={h}', '--set', f'data.img_width={w}',
            '--set', 'vo.device=cpu']
    assert vo_main(['images', str(img_dir), '--intrinsics', str(img_dir.parent / 'K.txt'),
                    '--rate', '10', '--out', str(offline), '--quiet', '--no-depth-output',
                    '--flow', 'dis'] + sets) == 0
    ref = read_tum(offline / 'poses_tum.txt')
    # live: the node with the same configuration, lock-step replay
    bag = tmp_path / 'bag'
    bagmod.write_bag(source, bag)
    params = {'data.img_height': h, 'data.img_width': w, 'device': 'cpu',
              'vo.flow_provider': 'dis', 'vo.depth_provider': 'none', 'checkpoint': ''}
    result = run_pipeline(bag, n, tmp_path / 'live', env=ros_env, node_params=params,
                          timeout=150.0)
    traj = result['trajectory']
    assert traj is not None and len(traj) == n, result
    np.testing.assert_allclose(traj.stamps, 1000 + np.arange(n) / 10.0, atol=1e-6)
    diff = float(np.abs(traj.poses - ref.poses).max())
    print(f'round trip: max |live - offline| pose element difference {diff:.3g}')
    assert diff < 1e-6, diff
