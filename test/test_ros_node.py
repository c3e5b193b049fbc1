"""
The vo_node over real DDS: the node runs in a subprocess, this process plays the camera.

Every test gets its own ROS_DOMAIN_ID (``ros_env``) and LOCALHOST discovery. Synthetic frames
(``make_sequence``) are published as a camera driver does: Image + CameraInfo with identical
stamps, reliable. Waiting is done on what the node publishes (odometry, status, diagnostics),
never on fixed sleeps, so the tests hold on a loaded machine.

Tolerance of the trajectory test: ATE (RMSE of the camera positions after Sim(3) alignment,
the classical mode is up to scale) below 5 % of the ground-truth path length.
"""

import math
import time

import cv2
from node_harness import (assert_finite_odometry, Camera, CLASSICAL, HEIGHT, ns_of,
                          optical_T_bc, sequence, SIZE, SMALL, stamp_of, start_node, stop_node,
                          WIDTH)
import numpy as np
import pytest
from trianflow_ros.eval.alignment import umeyama
from trianflow_ros.vo.covariance import BAD_VARIANCE, ORIGIN_VARIANCE

__all__ = ['sequence']     # the module fixture, imported


# --------------------------------------------------------------------------------------------
@pytest.mark.ros
def test_odometry_tf_depth_reset_and_parameters(ros_env, tmp_path, sequence):
    from trianflow_ros.ros.conversions import pose_to_matrix, transform_to_matrix
    images = sequence.images_uint8()
    K = sequence.K.numpy().astype(np.float64)
    proc = start_node(ros_env, tmp_path, SMALL + ['-p', 'publish_points:=true'])
    cam = Camera(ros_env)
    try:
        cam.wait_connected(proc)
        stamps = [100.0 + 0.1 * i for i in range(len(images))]
        for t, img in zip(stamps, images):
            cam.publish(t, img, K)
            cam.wait_for(lambda: cam.frame_result(t), 60.0, f'frame {t}', proc)
        states = [cam.frame_result(t)['state'] for t in stamps]
        assert states[0] == 'INITIALIZING' and all(s == 'TRACKING' for s in states[1:]), states
        cam.wait_for(lambda: len(cam.received['odom']) >= len(stamps), 10.0, 'odometry', proc)
        odom = [cam.odom_at(t) for t in stamps]
        assert all(m is not None for m in odom)
        assert_finite_odometry(odom)
        assert all(m.header.frame_id == 'odom' and m.child_frame_id == 'base_link'
                   for m in odom)

        # REP-105 base frame: the car drives forward = +x of base_link, little y / z
        T_ob = np.stack([pose_to_matrix(m.pose.pose) for m in odom])
        fwd = T_ob[-1, :3, 3]
        assert fwd[0] > 0 and abs(fwd[1]) < 0.1 * fwd[0] and abs(fwd[2]) < 0.1 * fwd[0], fwd
        # back into the camera frame, against the ground truth after Sim(3) alignment
        T_bc = optical_T_bc()
        est = np.linalg.inv(T_bc) @ T_ob @ T_bc
        gt = np.linalg.inv(sequence.poses[0].numpy()) @ sequence.poses.numpy()
        sim = umeyama(est[:, :3, 3], gt[:, :3, 3])
        err = sim.apply_points(est[:, :3, 3]) - gt[:, :3, 3]
        ate = float(np.sqrt((err ** 2).sum(1).mean()))
        length = float(np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1).sum())
        assert ate < 0.05 * length, f'ATE {ate:.4f} >= 5 % of the path length {length:.3f}'
        # rotations: camera-frame relative rotation error below 1 degree per frame
        for i in range(1, len(est)):
            dR = (np.linalg.inv(est[i - 1]) @ est[i])[:3, :3].T @ \
                (np.linalg.inv(gt[i - 1]) @ gt[i])[:3, :3]
            angle = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(dR) - 1) / 2))))
            assert angle < 1.0, f'frame {i}: rotation error {angle:.3f} deg'
        # covariance: never zero (the first message neither), grows along the trajectory;
        # the first twist is a stated prior (1 m/s, 1 rad/s), not 1e6; then measured, and
        # anisotropic: the scale error lies along the direction of travel (base x)
        var = [np.diag(np.reshape(m.pose.covariance, (6, 6))) for m in odom]
        assert all(np.all(v >= ORIGIN_VARIANCE * 0.999) for v in var), var[0]
        assert var[-1][0] >= var[1][0]
        assert odom[-1].twist.twist.linear.x > 0
        assert np.allclose(np.diag(np.reshape(odom[0].twist.covariance, (6, 6))), 1.0)
        for m in odom[2:]:
            tw = np.reshape(m.twist.covariance, (6, 6))[:3, :3]
            w, V = np.linalg.eigh(tw)
            assert abs(V[0, -1]) > 0.9 and w[-1] > 2.0 * w[1], (w, V[:, -1])

        # TF: odom -> base_link equal to the odometry pose of the same stamp
        cam.wait_for(lambda: len(cam.received['tf']) >= len(stamps), 10.0, '/tf', proc)
        tfs = {ns_of(t.header.stamp): t for m in cam.received['tf'] for t in m.transforms
               if t.header.frame_id == 'odom' and t.child_frame_id == 'base_link'}
        last = tfs[ns_of(stamp_of(stamps[-1]))]
        assert np.allclose(transform_to_matrix(last), T_ob[-1], atol=1e-6)
        # the robot's static transforms are not the node's business: no /tf_static publisher
        assert 'vo_node' not in cam.publishers_of('/tf_static'), cam.publishers_of('/tf_static')
        assert not cam.received['tf_static']

        # depth: 32FC1 at the working size, same stamp and frame as the image, finite
        cam.wait_for(lambda: len(cam.received['depth']) >= len(stamps) - 1, 10.0, 'depth',
                     proc)
        for d in cam.received['depth']:
            assert (d.encoding, d.height, d.width) == ('32FC1', HEIGHT, WIDTH)
            assert d.header.frame_id == 'camera_optical'
            assert ns_of(d.header.stamp) in {ns_of(stamp_of(t)) for t in stamps[1:]}
            arr = np.frombuffer(bytes(d.data), '<f4').reshape(HEIGHT, WIDTH)
            assert np.all(np.isfinite(arr)) and np.all(arr >= 0) and (arr > 0).mean() > 0.2
        cloud = cam.wait_for(lambda: cam.received['points'], 10.0, 'points', proc)[-1]
        assert cloud.width > 100 and cloud.header.frame_id == 'camera_optical'
        xyz = np.frombuffer(bytes(cloud.data), '<f4').reshape(-1, 3)
        assert np.all(np.isfinite(xyz)) and np.all(xyz[:, 2] > 0)
        info = cam.received['depth_info'][-1]
        assert (info.height, info.width) == (HEIGHT, WIDTH) and info.k[0] > 0
        cam.wait_for(lambda: cam.received['path'] and len(cam.received['path'][-1].poses)
                     == len(stamps), 10.0, 'path', proc)

        # diagnostics account for every frame
        vals = cam.wait_for(lambda: cam.accounting(len(stamps)), 15.0, 'diagnostics', proc)
        assert int(vals['processed']) == len(stamps) and int(vals['rejected']) == 0

        # parameters: out of range / read-only rejected with the range in the reason
        bad = cam.set_parameters(vo__num_matches=1)
        reason = bad[0].reason.lower()
        assert not bad[0].successful and 'range' in reason and '8' in reason, reason
        bad = cam.set_parameters(frame_skip=0)
        assert not bad[0].successful and 'range' in bad[0].reason.lower(), bad[0].reason
        bad = cam.set_parameters(geometry__ransac__threshold_px=-1.0)
        assert not bad[0].successful
        bad = cam.set_parameters(image_qos='sensor_data')
        assert not bad[0].successful and 'read-only' in bad[0].reason.lower(), bad[0].reason
        bad = cam.set_parameters(camera_matrix=[1.0, 2.0])
        assert not bad[0].successful and '9' in bad[0].reason, bad[0].reason
        bad = cam.set_parameters(odom_frame='')
        assert not bad[0].successful and 'odom_frame is empty' in bad[0].reason, bad[0].reason
        bad = cam.set_parameters(base_frame='odom')
        assert not bad[0].successful and 'both' in bad[0].reason, bad[0].reason
        bad = cam.set_parameters(vo__top_ratio=0.0)
        assert not bad[0].successful and 'range' in bad[0].reason, bad[0].reason
        good = cam.set_parameters(vo__num_matches=3000, odom_frame='odom')
        assert good[0].successful and good[1].successful

        # reset: the next frame is the new origin, the path restarts
        res = cam.trigger('reset')
        assert res.success, res.message
        cam.publish(200.0, images[5], K)
        cam.wait_for(lambda: cam.odom_at(200.0), 60.0, 'odometry after reset', proc)
        m = cam.odom_at(200.0)
        assert np.allclose(pose_to_matrix(m.pose.pose), np.eye(4), atol=1e-9)
        state = cam.wait_for(lambda: cam.frame_result(200.0), 10.0, 'status', proc)['state']
        assert state == 'INITIALIZING'
        cam.wait_for(lambda: len(cam.received['path'][-1].poses) == 1, 10.0, 'new path', proc)
    finally:
        cam.close()
        rc, log = stop_node(proc)
    assert rc == 0, log[-3000:]
    assert 'visual odometry ready' in log and 'flow=dis' in log
    assert 'parameter change rejected' in log


# --------------------------------------------------------------------------------------------
@pytest.mark.ros
def test_bad_input_warns_and_keeps_running(ros_env, tmp_path, sequence):
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header
    from trianflow_ros.ros.conversions import make_camera_info as make_info
    images = sequence.images_uint8()
    K = sequence.K.numpy().astype(np.float64)
    proc = start_node(ros_env, tmp_path, SMALL + ['-p', 'camera_info_timeout:=0.5', '-p',
                                                  'diagnostics_period:=0.2'])
    cam = Camera(ros_env)
    n = 0

    def send(t, img, **kw):
        nonlocal n
        cam.publish(t, img, K, **kw)
        n += 1
        return cam.wait_for(lambda: cam.accounting(n), 60.0, f'frame {t} handled', proc)

    try:
        cam.wait_connected(proc)
        # 1. no camera_info and no camera_matrix: dropped with a warning that names the fix
        for t in (10.0, 11.0, 12.0):
            cam.publish(t, images[0], K, info=False)
            n += 1
            cam.spin(1.0)
        vals = cam.wait_for(lambda: cam.accounting(n), 30.0, 'frames without camera_info',
                            proc)
        assert int(vals['rejected_no_camera_info']) == 3 and int(vals['processed']) == 0
        # 2. camera_matrix set at run time: frames without camera_info are used
        res = cam.set_parameters(camera_matrix=[float(v) for v in K.reshape(-1)])
        assert res[0].successful, res[0].reason
        send(12.05, images[0], info=False)
        send(12.1, images[1], info=False)
        assert cam.odom_at(12.1) is not None
        # 3. with camera_info; other encodings of the same frames are accepted
        send(12.2, np.ascontiguousarray(images[2][:, :, ::-1]), encoding='bgr8')
        mono = cv2.cvtColor(images[3], cv2.COLOR_RGB2GRAY)
        send(12.3, (mono.astype(np.uint16) * 257), encoding='mono16')
        send(12.4, mono, encoding='mono8')
        assert cam.odom_at(12.4) is not None, cam.frame_result(12.4)
        # 4. bad frames
        alpha = np.full(images[5].shape[:2] + (1,), 255, np.uint8)
        send(12.5, np.concatenate([images[5], alpha], axis=2), encoding='rgba8')
        assert cam.odom_at(12.5) is not None, cam.frame_result(12.5)
        yuv = images[5][:, :, :2].copy()
        msg = Image(header=Header(stamp=stamp_of(12.6), frame_id='camera_optical'),
                    height=HEIGHT, width=WIDTH, encoding='yuv422', step=WIDTH * 2,
                    data=yuv.tobytes())
        cam.pub_info.publish(make_info(K, HEIGHT, WIDTH, msg.header))
        cam.pub_image.publish(msg)
        n += 1
        vals = cam.wait_for(lambda: cam.accounting(n), 60.0, 'yuv422 frame', proc)
        assert int(vals['rejected_encoding']) == 1
        small = cv2.resize(images[6], (WIDTH, 100))
        vals = send(12.7, small, info_hw=(HEIGHT, WIDTH))            # aspect differs
        assert int(vals['rejected_size']) == 1
        vals = send(12.7, images[6])                                  # duplicate stamp
        vals = send(12.65, images[6])                                 # out of order
        assert int(vals['rejected_stamp']) == 2
        # malformed frames of one kind but different errors: each is logged (the throttle
        # hides repeats of one error only)
        empty = Image(header=Header(stamp=stamp_of(12.71), frame_id='camera_optical'),
                      height=0, width=0, encoding='rgb8', step=0, data=b'')
        short = Image(header=Header(stamp=stamp_of(12.72), frame_id='camera_optical'),
                      height=HEIGHT, width=WIDTH, encoding='rgb8', step=WIDTH * 3,
                      data=bytes(10))
        for m in (empty, short):
            # one at a time: two frames sent back to back may meet a busy worker, which keeps
            # only the newest (skipped_busy, by design), and one would never be validated
            cam.pub_info.publish(make_info(K, HEIGHT, WIDTH, m.header))
            cam.pub_image.publish(m)
            n += 1
            vals = cam.wait_for(lambda: cam.accounting(n), 60.0, 'malformed frame', proc)
        assert int(vals['rejected_malformed']) == 2, vals
        send(12.8, np.zeros_like(images[6]))                          # black frame
        assert cam.frame_result(12.8)['state'] == 'LOST'
        # publish_when_lost (default): the held pose with BAD covariances, not silence
        lost = cam.wait_for(lambda: cam.odom_at(12.8), 10.0, 'LOST odometry', proc)
        assert np.allclose(np.diag(np.reshape(lost.pose.covariance, (6, 6))), BAD_VARIANCE)
        assert np.allclose(np.diag(np.reshape(lost.twist.covariance, (6, 6))), BAD_VARIANCE)
        assert not any(ns_of(t.header.stamp) == ns_of(stamp_of(12.8))
                       for m in cam.received['tf'] for t in m.transforms), 'no TF when LOST'
        d = cam.last_diag()
        assert d[0]['state'] == 'LOST' and d[1].level == d[1].ERROR
        send(12.9, images[6])
        assert cam.frame_result(12.9)['state'] == 'RECOVERED', cam.frame_result(12.9)
        assert cam.odom_at(12.9) is not None
        # an empty frame_id: odometry still published, the fix in the log
        send(13.0, images[7], frame_id='')
        assert cam.odom_at(13.0) is not None
        # a +1 hour stamp jump: processed, warned, the twist reported unknown (the prior)
        vals = send(3613.0, images[8])
        jump = cam.wait_for(lambda: cam.odom_at(3613.0), 10.0, 'odometry after the jump', proc)
        assert np.allclose(np.diag(np.reshape(jump.twist.covariance, (6, 6))), 1.0)
        assert jump.twist.twist.linear.x == 0.0
        vals = cam.wait_for(lambda: int(cam.last_diag()[0]['time_jumps']) == 1 and
                            cam.last_diag()[0], 10.0, 'time jump counted', proc)
        assert_finite_odometry(cam.received['odom'])
        vals = cam.accounting(n)
        total = int(vals['processed']) + int(vals['skipped']) + int(vals['rejected'])
        assert total == n, vals
        assert proc.poll() is None
    finally:
        cam.close()
        rc, log = stop_node(proc)
    assert rc == 0, log[-3000:]
    for text in ('no camera_info has been received', 'camera_matrix', "encoding 'yuv422' is "
                 'not supported', 'does not match camera_info size', 'duplicate image stamp',
                 'out-of-order image stamp', 'tracking LOST', 'covariance 1e6 is published',
                 'image is 0x0', 'image data has 10 bytes', 'header.frame_id is empty',
                 'camera_frame:=', 'jumped forward by 3600.0 s', 'call ~/reset',
                 'latency_ms is not reported'):
        assert text in log, f'{text!r} not in the log:\n{log[-3000:]}'


# --------------------------------------------------------------------------------------------
@pytest.mark.ros
def test_delivery_rate_every_frame_accounted(ros_env, tmp_path, sequence):
    """
    30 frames of 832x256 at 10 Hz: processed + skipped(busy) = 30, none rejected.

    Every frame has its camera_info (before or after it), so no frame may be dropped as
    unpaired; the newest-frame worker may skip frames (skipped_busy), by design.
    """
    images = [cv2.resize(im, (2 * WIDTH, 2 * HEIGHT), interpolation=cv2.INTER_LINEAR)
              for im in sequence.images_uint8()]
    K = sequence.K.numpy().astype(np.float64).copy()
    K[:2] *= 2.0
    proc = start_node(ros_env, tmp_path, SMALL + ['-p', 'diagnostics_period:=0.2'])
    cam = Camera(ros_env)
    count = 30
    try:
        cam.wait_connected(proc)
        t0 = time.monotonic()
        for i in range(count):
            # forward then backward through the sequence: always trackable
            k = i % 22
            img = images[k if k < 12 else 22 - k]
            # stamps = now: the latency is meaningful; every other camera_info comes after
            # its image (as image_transport's CameraPublisher sends them)
            cam.publish(time.time(), img, K, info_after=bool(i % 2))
            cam.spin(max(0.0, t0 + 0.1 * (i + 1) - time.monotonic()))
        vals = cam.wait_for(lambda: cam.accounting(count), 60.0, 'all 30 frames accounted',
                            proc)
        processed = int(vals['processed'])
        skipped_busy = int(vals['skipped_busy'])
        rejected = int(vals['rejected'])
        counts = {k: v for k, v in vals.items()
                  if k.startswith(('received', 'processed', 'skipped', 'rejected', 'paired'))}
        assert int(vals['received']) == count
        assert processed + int(vals['skipped']) + rejected == count, counts
        assert rejected == 0, f'{counts}\n{proc.log_path.read_text()[-3000:]}'
        # each frame with its own camera_info, or (when that came more than camera_info_wait
        # after the image, e.g. under load) the previous one: never dropped
        assert int(vals['paired_exact']) + int(vals['paired_latest']) == count, vals
        assert vals['latency_ms'] != 'n/a' and float(vals['latency_mean_ms']) > 0, vals
        assert processed >= 3, vals
        print(f"\ndelivery: received {vals['received']}/{count}, processed {processed}, "
              f'skipped(busy) {skipped_busy}, latency (now - stamp) mean '
              f"{vals['latency_mean_ms']} ms, max {vals['latency_max_ms']} ms, in node mean "
              f"{vals['in_node_mean_ms']} ms, processing {vals['processing_ms']} ms, paired "
              f"exact {vals['paired_exact']} / latest {vals['paired_latest']}")
        # pause: frames are counted as skipped_paused, none processed
        assert cam.trigger('pause').success
        for i in range(3):
            cam.publish(time.time(), images[0], K)
        vals = cam.wait_for(lambda: cam.accounting(count + 3), 30.0, 'paused frames', proc)
        assert int(vals['skipped_paused']) == 3 and int(vals['processed']) == processed
        assert cam.trigger('resume').success
        # frame_skip at run time: every 2nd frame is processed
        assert cam.set_parameters(frame_skip=2)[0].successful
        for i in range(4):
            cam.publish(time.time(), images[i], K)
            cam.wait_for(lambda: cam.accounting(count + 4 + i), 30.0, 'frame_skip', proc)
        assert int(cam.accounting(count + 7)['skipped_stride']) == 2
        # a best-effort camera against the reliable default: the node says how to fix it
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        cam.node.create_publisher(Image, 'image', QoSProfile(
            depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        cam.wait_for(lambda: 'image_qos:=sensor_data' in proc.log_path.read_text(), 30.0,
                     'the incompatible-QoS warning', proc)
    finally:
        cam.close()
        rc, log = stop_node(proc)
    assert rc == 0, log[-3000:]


# --------------------------------------------------------------------------------------------
@pytest.mark.ros
def test_startup_errors_exit_nonzero_with_the_fix(ros_env, tmp_path):
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(b'this is not a checkpoint' * 10)
    runs = {
        'corrupt': start_node(ros_env, tmp_path, ['-p', f'checkpoint:={corrupt}'], 'corrupt'),
        'missing': start_node(ros_env, tmp_path, ['-p', 'checkpoint:=/nonexistent/w.pth'],
                              'missing'),
        'range': start_node(ros_env, tmp_path, ['-p', 'vo.num_matches:=1'], 'range'),
        'no_config': start_node(ros_env, tmp_path, ['-p', 'config_file:=nonexistent.yaml'],
                                'no_config'),
        'config': start_node(ros_env, tmp_path, ['-p', 'config_file:=nyu.yaml', '-p',
                                                 'data.img_width:=640'] + CLASSICAL, 'config'),
        'fallback': start_node(ros_env, tmp_path, SIZE + [
            '-p', f'checkpoint:={corrupt}', '-p', 'fallback_to_classical:=true', '-p',
            'image_qos:=sensor_data', '-p', 'use_compressed:=true'], 'fallback'),
    }
    try:
        for name in ('corrupt', 'missing', 'range', 'no_config'):
            runs[name].wait(timeout=120)
        end = time.monotonic() + 120
        for name in ('fallback', 'config'):
            while 'visual odometry ready' not in runs[name].log_path.read_text():
                assert runs[name].poll() is None, runs[name].log_path.read_text()
                assert time.monotonic() < end, f'{name} node did not start'
                time.sleep(0.2)
    finally:
        results = {name: stop_node(p) for name, p in runs.items()}
    rc, log = results['corrupt']
    assert rc == 1 and str(corrupt) in log and 'Fix' in log and 'ERROR' in log, log
    rc, log = results['missing']
    assert rc == 1 and '/nonexistent/w.pth' in log and 'does not exist' in log, log
    rc, log = results['range']
    assert rc == 1 and 'vo.num_matches' in log, log
    rc, log = results['fallback']
    assert rc == 0 and str(corrupt) in log and 'flow=dis' in log, log
    assert 'image_qos=sensor_data' in log, log
    rc, log = results['no_config']
    assert rc == 1 and 'nonexistent.yaml' in log and 'not found' in log, log
    rc, log = results['config']   # found in the package's config folder, then ROS parameters
    assert rc == 0 and 'working resolution=640x448' in log, log
