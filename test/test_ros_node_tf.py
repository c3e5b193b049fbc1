"""
The vo_node's TF over real DDS: it never fights the robot's transforms.

- By default it has no /tf_static publisher at all; the base -> camera mount comes from the
  robot's TF (here: the test publishes base_link -> camera_optical at (1, 0, 0.5) on
  /tf_static, *after* the first frames, as a late robot_state_publisher would), looked up
  again with every frame until found; ``base_to_camera`` is used meanwhile.
- ``invert_tf`` publishes base_frame -> odom_frame (beside wheel odometry), ``publish_tf``
  false publishes none; both change at run time.
- ``publish_camera_tf:=true`` (asked for) latches base_to_camera on /tf_static.
"""

from node_harness import Camera, ns_of, sequence, SMALL, start_node, stop_node
import numpy as np
import pytest
from trianflow_ros.ros.conversions import (pose_to_matrix, transform_from_xyz_rpy,
                                           transform_to_matrix)

__all__ = ['sequence']

MOUNT = [1.0, 0.0, 0.5, -np.pi / 2, 0.0, -np.pi / 2]     # the robot's real camera mount


def tf_pairs(cam):
    """Return {(parent, child): [transforms]} of everything received on /tf."""
    out = {}
    for m in cam.received['tf']:
        for t in m.transforms:
            out.setdefault((t.header.frame_id, t.child_frame_id), []).append(t)
    return out


@pytest.mark.ros
def test_tf_extrinsics_from_the_robot_and_output_policies(ros_env, tmp_path, sequence):
    images = sequence.images_uint8()
    K = sequence.K.numpy().astype(np.float64)
    proc = start_node(ros_env, tmp_path, SMALL + ['-p', 'tf_timeout:=0.2'])
    cam = Camera(ros_env)
    t = [100.0]

    def frame(k, **kw):
        t[0] += 0.1
        stamp = t[0]
        cam.publish(stamp, images[k % len(images)], K, **kw)
        return cam.wait_for(lambda: cam.odom_at(stamp), 60.0, f'odometry {stamp}', proc)

    try:
        cam.wait_connected(proc)
        for k in range(2):
            frame(k)
        assert 'vo_node' not in cam.publishers_of('/tf_static')
        log = proc.log_path.read_text()
        assert "no TF 'base_link' -> 'camera_optical' yet" in log and 'from parameters' in log
        # the robot's mount appears late: found by a later lookup (not a cached failure)
        T_mount = transform_from_xyz_rpy(MOUNT)
        cam.publish_static('base_link', 'camera_optical', T_mount)
        cam.wait_for(lambda: (frame(2) and "'camera_optical' from tf"
                              in proc.log_path.read_text()), 60.0, 'the TF mount used', proc)
        frame(3)
        diag = cam.wait_for(lambda: cam.last_diag()[0]['extrinsics'] == 'camera_optical: tf'
                            and cam.last_diag()[0], 10.0, 'extrinsics from tf', proc)
        assert diag['tf_listener'] in ('own TF tree', 'tf2_ros')
        pairs = tf_pairs(cam)
        assert ('odom', 'base_link') in pairs and ('base_link', 'odom') not in pairs
        # invert_tf at run time, beside wheel odometry: base_link -> vo_odom
        res = cam.set_parameters(odom_frame='vo_odom', invert_tf=True)
        assert all(r.successful for r in res), res
        m = frame(4)
        inv = cam.wait_for(lambda: tf_pairs(cam).get(('base_link', 'vo_odom')), 10.0,
                           'the inverted TF', proc)[-1]
        assert ns_of(inv.header.stamp) == ns_of(m.header.stamp)
        assert m.header.frame_id == 'vo_odom' and m.child_frame_id == 'base_link'
        assert np.allclose(transform_to_matrix(inv) @ pose_to_matrix(m.pose.pose), np.eye(4),
                           atol=1e-6)
        # publish_tf false: no transform at all
        assert cam.set_parameters(publish_tf=False)[0].successful
        before = sum(len(v) for v in tf_pairs(cam).values())
        frame(5)
        frame(6)
        cam.spin(0.5)
        assert sum(len(v) for v in tf_pairs(cam).values()) == before
    finally:
        cam.close()
        rc, log = stop_node(proc)
    assert rc == 0, log[-3000:]
    assert 'vo_odom (inverted)' not in log   # the start-up line shows the start-up policy
    assert 'publishes tf: odom -> base_link' in log


@pytest.mark.ros
def test_publish_camera_tf_latches_base_to_camera_when_asked(ros_env, tmp_path, sequence):
    images = sequence.images_uint8()
    K = sequence.K.numpy().astype(np.float64)
    proc = start_node(ros_env, tmp_path, SMALL + ['-p', 'publish_camera_tf:=true', '-p',
                                                  'use_tf_extrinsics:=false'])
    cam = Camera(ros_env)
    try:
        cam.wait_connected(proc)
        cam.publish(5.0, images[0], K)
        cam.wait_for(lambda: cam.odom_at(5.0), 60.0, 'odometry', proc)
        static = cam.wait_for(lambda: [t for m in cam.received['tf_static']
                                       for t in m.transforms], 10.0, '/tf_static', proc)
        assert [(t.header.frame_id, t.child_frame_id) for t in static] == \
            [('base_link', 'camera_optical')]
        assert 'vo_node' in cam.publishers_of('/tf_static')
    finally:
        cam.close()
        rc, log = stop_node(proc)
    assert rc == 0, log[-3000:]
    assert 'no TF' not in log        # use_tf_extrinsics:=false: no lookups, no warnings
