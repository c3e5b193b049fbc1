"""
What the node publishes, checked without DDS.

Odometry samples (lost, twist, time jumps), depth at the camera's resolution, the bounded path,
the TF tree and the odometry transform policy.
"""

import math

import numpy as np
import pytest
from trianflow_ros.ros import conversions as conv
from trianflow_ros.ros.depth_output import depth_output, resize_depth
from trianflow_ros.ros.odometry_output import OdometryOutput
from trianflow_ros.ros.path_keeper import PathKeeper
from trianflow_ros.ros.tf import odometry_transform, OPTICAL_XYZ_RPY
from trianflow_ros.ros.tf_tree import TransformTree
from trianflow_ros.vo import covariance as C
from trianflow_ros.vo.types import FrameResult, TrackingState

T_BC = conv.transform_from_xyz_rpy(OPTICAL_XYZ_RPY)


def result(index, z, state=TrackingState.TRACKING, prev_z=None, method='essential'):
    """Return a FrameResult of a camera at depth z on its optical axis (forward driving)."""
    T = np.eye(4)
    T[2, 3] = z
    motion = np.eye(4)
    if prev_z is not None:
        motion[2, 3] = z - prev_z
    rel = C.nav_from_left(C.relative_covariance(
        method, focal_px=300.0, sigma_px=0.5, num_inliers=500,
        translation_norm=float(np.linalg.norm(motion[:3, 3])), scene_depth=10.0,
        translation=motion[:3, 3]), motion)
    covariance = C.initial_covariance() if state == TrackingState.INITIALIZING else \
        C.initial_covariance() + rel * (index + 1)
    if state == TrackingState.LOST:
        covariance = rel = C.lost_covariance()
        motion = np.eye(4)
    return FrameResult(stamp=float(index), index=index, T_world_cam=T, T_prev_cur=motion,
                       state=state, motion=None, method=method, reference_index=0,
                       num_matches=100, num_inliers=80, scale=1.0, scale_source='depth',
                       depth=None, K=np.eye(3), covariance=covariance,
                       relative_covariance=rel)


SEC = 1_000_000_000


def test_odometry_first_twist_is_a_prior_then_measured():
    out = OdometryOutput(max_frame_interval=10.0, twist_sigma=(2.0, 0.5))
    first = out.sample(result(0, 0.0, TrackingState.INITIALIZING), T_BC, 0)
    assert not first.twist_known
    assert np.allclose(np.diag(first.twist_covariance), [4.0] * 3 + [0.25] * 3)
    assert np.allclose(np.diag(first.pose_covariance), C.ORIGIN_VARIANCE)    # never zero
    s = out.sample(result(1, 1.0, prev_z=0.0), T_BC, SEC // 10)
    assert s.twist_known and np.isclose(s.linear[0], 10.0) and abs(s.linear[1]) < 1e-9
    assert np.all(np.isfinite(s.twist_covariance))
    assert np.linalg.eigvalsh(s.twist_covariance).min() > 0
    assert s.T_odom_base[0, 3] == pytest.approx(1.0)            # base x = camera z
    # the base covariance is anisotropic along x, the direction of travel
    w, V = np.linalg.eigh(s.pose_covariance[:3, :3])
    assert abs(V[0, -1]) > 0.99 and w[-1] > 3 * w[1]


def test_odometry_lost_frames_publish_bad_covariance_or_nothing():
    out = OdometryOutput()
    out.sample(result(0, 0.0, TrackingState.INITIALIZING), T_BC, 0)
    out.sample(result(1, 1.0, prev_z=0.0), T_BC, SEC)
    lost = result(2, 1.0, TrackingState.LOST)
    s = out.sample(lost, T_BC, 2 * SEC, publish_when_lost=True)
    assert s.lost and np.allclose(np.diag(s.pose_covariance), C.BAD_VARIANCE)
    assert np.allclose(np.diag(s.twist_covariance), C.BAD_VARIANCE)
    assert s.T_odom_base[0, 3] == pytest.approx(1.0) and np.all(s.linear == 0)
    assert out.sample(lost, T_BC, 2 * SEC, publish_when_lost=False) is None
    # recovery measures the twist against the last good frame (2 s earlier)
    rec = out.sample(result(3, 2.0, TrackingState.RECOVERED, prev_z=1.0), T_BC, 3 * SEC)
    assert rec.twist_known and np.isclose(rec.linear[0], 0.5)


def test_odometry_time_jump_makes_the_twist_unknown():
    out = OdometryOutput(max_frame_interval=10.0)
    out.sample(result(0, 0.0, TrackingState.INITIALIZING), T_BC, 0)
    s = out.sample(result(1, 1.0, prev_z=0.0), T_BC, 3600 * SEC)     # +1 h
    assert not s.twist_known and s.time_jump == pytest.approx(3600.0)
    assert np.all(s.linear == 0) and np.all(np.diag(s.twist_covariance) < C.BAD_VARIANCE)
    s = out.sample(result(2, 2.0, prev_z=1.0), T_BC, 3600 * SEC + SEC // 10)
    assert s.twist_known and np.isclose(s.linear[0], 10.0)


def test_resize_depth_never_blends_known_with_unknown():
    depth = np.full((4, 6), 5.0, np.float32)
    depth[:, 3:] = 10.0
    depth[0, 0] = 0.0                                  # unknown
    depth[3, 5] = np.nan                               # unknown
    up = resize_depth(depth, (16, 24))
    assert up.shape == (16, 24) and up.dtype == np.float32 and np.all(np.isfinite(up))
    values = set(np.round(up[up > 0], 4))
    assert min(values) >= 5.0 and max(values) <= 10.0        # no value pulled towards 0
    assert np.all(up[:2, :2] == 0.0)                          # unknown stays unknown
    assert (up == 0).mean() < 0.1
    # inside a known area bilinear interpolation is used (values between the two depths)
    assert any(5.0 < v < 10.0 for v in values)
    smooth = resize_depth(np.arange(12, dtype=np.float32).reshape(3, 4) + 1.0, (6, 8))
    assert np.all(smooth > 0) and np.all(np.diff(smooth[2]) >= 0)


def test_depth_output_at_camera_or_network_resolution():
    K_work = np.array([[96.0, 0, 95.5], [0, 96.0, 31.5], [0, 0, 1]])
    K_image = np.array([[416.0, 0, 415.5], [0, 416.0, 127.5], [0, 0, 1]])
    depth = np.full((64, 192), 3.0, np.float32)
    d, K = depth_output(depth, K_work, (256, 832), K_image, 'camera')
    assert d.shape == (256, 832) and np.all(d == 3.0) and np.allclose(K, K_image)
    d, K = depth_output(depth, K_work, (256, 832), None, 'camera')
    assert np.allclose(K, conv.scale_K(K_work, (64, 192), (256, 832)))
    d, K = depth_output(depth, K_work, (256, 832), K_image, 'network')
    assert d.shape == (64, 192) and np.allclose(K, K_work)
    with pytest.raises(ValueError, match='camera'):
        depth_output(depth, K_work, (256, 832), K_image, 'full')


def test_path_keeper_bounds_length_and_rate():
    now = [0.0]
    keeper = PathKeeper(3, 1.0, clock=lambda: now[0])

    class Path:
        header = None
        poses = None

    published = []
    for i in range(10):
        now[0] = 0.25 * i
        keeper.add(i, f'h{i}')
        msg = keeper.take(Path)
        if msg is not None:
            published.append((now[0], list(msg.poses), msg.header))
    assert [p[0] for p in published] == [0.0, 1.0, 2.0]       # at most once per second
    assert published[-1][1] == [6, 7, 8] and published[-1][2] == 'h8'
    now[0] = 3.0
    last = keeper.take(Path)                                   # the timer's flush
    assert last is not None and list(last.poses) == [7, 8, 9]
    assert keeper.take(Path) is None                           # nothing new
    keeper.reset()
    keeper.add(42, 'h')
    assert list(keeper.take(Path).poses) == [42]               # first after reset: at once
    keeper.configure(1, 0.0)
    keeper.add(43, 'h')
    assert list(keeper.take(Path).poses) == [43]


def test_tf_tree_lookups_and_conflicts():
    tree = TransformTree()
    T_bc = conv.transform_from_xyz_rpy([1.0, 0.0, 0.5, -math.pi / 2, 0.0, -math.pi / 2])
    T_b_mount = conv.transform_from_xyz_rpy([0.2, 0.0, 0.3, 0.0, 0.1, 0.0])
    T_mount_cam = np.linalg.inv(T_b_mount) @ T_bc
    tree.put('base_link', 'camera_mount', T_b_mount)
    tree.put('/camera_mount', 'camera_optical', T_mount_cam)
    assert tree.lookup('base_link', 'camera_optical') is not None
    assert np.allclose(tree.lookup('base_link', 'camera_optical'), T_bc)
    assert np.allclose(tree.lookup('camera_optical', 'base_link'), np.linalg.inv(T_bc))
    assert tree.lookup('base_link', 'other') is None and tree.lookup('', 'x') is None
    T_ob = conv.transform_from_xyz_rpy([3.0, 1.0, 0.0, 0.0, 0.0, 0.4])
    tree.put('odom', 'base_link', T_ob)
    assert np.allclose(tree.lookup('odom', 'camera_optical'), T_ob @ T_bc)
    assert not tree.conflicts
    tree.put('vo_odom', 'base_link', np.eye(4))                 # a second parent
    assert tree.conflicts == {'base_link': ('odom', 'vo_odom')}
    tree.put('camera_optical', 'odom', np.eye(4))               # a loop must not hang
    tree.lookup('base_link', 'nowhere')


def test_odometry_transform_direction():
    from std_msgs.msg import Header
    T = conv.transform_from_xyz_rpy([1.0, 2.0, 0.0, 0.0, 0.0, 0.3])
    hdr = Header(frame_id='ignored')
    fwd = odometry_transform(T, hdr, 'odom', 'base_link')
    assert (fwd.header.frame_id, fwd.child_frame_id) == ('odom', 'base_link')
    assert np.allclose(conv.transform_to_matrix(fwd), T)
    inv = odometry_transform(T, hdr, 'vo_odom', 'base_link', invert=True)
    assert (inv.header.frame_id, inv.child_frame_id) == ('base_link', 'vo_odom')
    assert np.allclose(conv.transform_to_matrix(inv) @ T, np.eye(4), atol=1e-12)


def test_distortion_tracker_reports_changes_and_unsupported_models():
    from trianflow_ros.ros.camera_distortion import DistortionTracker
    tracker = DistortionTracker()
    dist, changed, problem = tracker.update('plumb_bob', [0.0] * 5)
    assert dist is None and changed and not problem and tracker.used == 'none (pinhole)'
    dist, changed, problem = tracker.update('plumb_bob', [-0.1, 0.01, 0.0, 0.0, 0.0])
    assert dist.model == 'plumb_bob' and changed and 'plumb_bob' in tracker.used
    dist2, changed, _ = tracker.update('plumb_bob', [-0.1, 0.01, 0.0, 0.0, 0.0])
    assert dist2 == dist and not changed
    dist, changed, problem = tracker.update('double_sphere', [0.1] * 6)
    assert dist is None and changed and 'double_sphere' in problem and 'pinhole' in problem
    assert tracker.update('double_sphere', [0.1] * 6)[2] == problem      # said every time
    assert 'unsupported' in tracker.used
