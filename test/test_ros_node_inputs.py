"""
The vo_node's inputs over real DDS: camera_info pairing, distortion, depth size, start-up checks.

- Pairing: the first image after camera_info starts is processed; a gap in camera_info shorter
  than camera_info_max_age drops nothing; after it, camera_matrix applies again (it used to be
  ignored for good once any camera_info was seen).
- Distortion: ``D`` of camera_info reaches the odometry (logged, in the diagnostics and in
  depth/camera_info); an unsupported model is warned about and processed as pinhole.
- Depth at the camera's resolution (upsampled, K of the image), the network size as an option.
- Start-up: invalid frames and top_ratio stop the node with the fix; weights that cannot be used
  fall back to the classical pipeline when fallback_to_classical says so (also a missing path
  or a directory), an empty file is named; data.img_height reads back the size in use.
"""

import time

import cv2
from node_harness import (Camera, HEIGHT, sequence, SMALL, stamp_of, start_node, stop_node,
                          WIDTH)
import numpy as np
import pytest
from trianflow_ros.geometry.distortion import Distortion

__all__ = ['sequence']


@pytest.mark.ros
def test_pairing_gaps_camera_matrix_distortion_and_depth_size(ros_env, tmp_path, sequence):
    big = [cv2.resize(im, (2 * WIDTH, 2 * HEIGHT), interpolation=cv2.INTER_LINEAR)
           for im in sequence.images_uint8()]
    K = sequence.K.numpy().astype(np.float64).copy()
    K[:2] *= 2.0
    # camera_info_wait 3 s: the exact pairing holds under load (an image waits for its info);
    # set to 0 at run time where no info is coming
    proc = start_node(ros_env, tmp_path, SMALL + [
        '-p', 'camera_info_max_age:=1.0', '-p', 'camera_info_timeout:=3.0', '-p',
        'camera_info_wait:=3.0', '-p', 'diagnostics_period:=0.2'])
    cam = Camera(ros_env)
    n = 0

    def send(t, k, **kw):
        nonlocal n
        cam.publish(t, big[k], K, **kw)
        n += 1
        return cam.wait_for(lambda: cam.accounting(n), 60.0, f'frame {t} handled', proc)

    try:
        cam.wait_connected(proc)
        # camera_info starts after its image (a driver's first info, a slow discovery)
        cam.publish(1.0, big[0], K, info=False)
        n += 1
        cam.spin(0.5)
        cam.publish_info(1.0, K, big[0].shape[:2])
        vals = cam.wait_for(lambda: cam.accounting(n), 60.0, 'first frame', proc)
        assert int(vals['processed']) == 1 and int(vals['paired_exact']) == 1, vals
        # lens distortion of the camera_info: used and published with the depth
        dist = Distortion('plumb_bob', (-0.05, 0.01, 0.0, 0.0, 0.0))
        for k, t in enumerate((1.1, 1.2, 1.3), start=1):
            send(t, k, distortion=dist)
        assert int(cam.last_diag()[0]['paired_exact']) == 4, cam.last_diag()[0]
        # a gap of 0.6 s in camera_info (< camera_info_max_age): nothing dropped
        assert cam.set_parameters(camera_info_wait=0.0)[0].successful
        for k, t in enumerate((1.4, 1.5, 1.6, 1.7, 1.8, 1.9), start=4):
            vals = send(t, k, info=False)
        assert int(vals['rejected']) == 0 and int(vals['paired_latest']) == 6, vals
        assert int(vals['processed']) == 10, vals
        # beyond max_age without camera_matrix: dropped, with the fix in the log
        vals = send(3.0, 10, info=False)
        assert int(vals['rejected_no_camera_info']) == 1, vals
        # camera_matrix applies again although camera_info was seen before
        res = cam.set_parameters(camera_matrix=[float(v) for v in K.reshape(-1)])
        assert res[0].successful, res[0].reason
        vals = send(3.1, 11, info=False)
        assert int(vals['paired_matrix']) == 1 and int(vals['processed']) == 11, vals
        assert 'plumb_bob' in vals['distortion'], vals['distortion']
        # camera_info again (camera_matrix unset: the image waits for its own info)
        res = cam.set_parameters(camera_matrix=[0.0] * 9, camera_info_wait=3.0)
        assert all(r.successful for r in res), res
        # depth at the camera's size (256x832) with the image's K and D ...
        d = cam.wait_for(lambda: [m for m in cam.received['depth'] if m.header.stamp.sec == 1],
                         10.0, 'depth', proc)[-1]
        assert (d.height, d.width, d.encoding) == (2 * HEIGHT, 2 * WIDTH, '32FC1')
        arr = np.frombuffer(bytes(d.data), '<f4')
        assert np.all(np.isfinite(arr)) and (arr > 0).mean() > 0.2
        infos = {(i.header.stamp.sec, i.header.stamp.nanosec): i
                 for i in cam.received['depth_info']}
        info = infos[(d.header.stamp.sec, d.header.stamp.nanosec)]
        assert (info.height, info.width) == (2 * HEIGHT, 2 * WIDTH)
        assert np.allclose(np.reshape(info.k, (3, 3)), K)
        stamped = [i for i in cam.received['depth_info'] if i.distortion_model == 'plumb_bob'
                   and list(i.d) == list(dist.coeffs)]
        assert stamped, [(i.distortion_model, list(i.d)) for i in cam.received['depth_info']]
        # ... or the network's, as an option at run time
        assert cam.set_parameters(depth_resolution='network')[0].successful
        send(3.2, 0)
        d = cam.wait_for(lambda: [m for m in cam.received['depth']
                                  if (m.header.stamp.sec, m.header.stamp.nanosec) ==
                                  (3, 200000000)], 10.0, 'network depth', proc)[-1]
        assert (d.height, d.width) == (HEIGHT, WIDTH)
        # an unsupported model: warned, processed as pinhole
        from std_msgs.msg import Header
        from trianflow_ros.ros.conversions import make_camera_info, numpy_to_image
        header = Header(stamp=stamp_of(3.3), frame_id='camera_optical')
        info = make_camera_info(K, 2 * HEIGHT, 2 * WIDTH, header)
        info.distortion_model, info.d = 'double_sphere', [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
        cam.pub_info.publish(info)
        cam.pub_image.publish(numpy_to_image(big[1], 'rgb8', header))
        n += 1
        vals = cam.wait_for(lambda: cam.accounting(n), 60.0, 'unsupported distortion', proc)
        assert int(vals['processed']) == 13 and 'unsupported' in vals['distortion'], vals
        assert int(vals['paired_exact']) == 6, vals
        # the camera switches to a 4:3 crop: another working size ('auto'), so the first such
        # frame is LOST and re-anchors at the held pose, and the next ones are tracked
        x0, w43 = (2 * WIDTH - 2 * HEIGHT * 4 // 3) // 2, 2 * HEIGHT * 4 // 3
        crop = [np.ascontiguousarray(im[:, x0:x0 + w43]) for im in big]
        K43 = K.copy()
        K43[0, 2] -= x0
        for k, t in enumerate((3.4, 3.5, 3.6), start=2):
            cam.publish(t, crop[k], K43)
            n += 1
            vals = cam.wait_for(lambda: cam.accounting(n), 60.0, f'4:3 frame {t}', proc)
        assert int(vals['processed']) == 16 and int(vals['rejected']) == 1, vals
        odom = cam.wait_for(lambda: [m for m in cam.received['odom']
                                     if (m.header.stamp.sec, m.header.stamp.nanosec) ==
                                     (3, 600000000)], 10.0, 'odometry after the switch', proc)
        p = odom[-1].pose.pose.position
        assert np.all(np.isfinite([p.x, p.y, p.z])), p
    finally:
        cam.close()
        rc, log = stop_node(proc)
    assert rc == 0, log[-3000:]
    for text in ('camera_info distortion: plumb_bob', "'double_sphere'",
                 'processed as pinhole', 'camera_info_max_age=1 s', 'using the camera_matrix',
                 're-anchored because the working size changed'):
        assert text in log, f'{text!r} not in the log:\n{log[-3000:]}'


@pytest.mark.ros
def test_startup_checks_name_the_fix_and_fallback_applies(ros_env, tmp_path):
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    folder = tmp_path / 'weights_dir'
    folder.mkdir()
    runs = {
        'no_odom': ['-p', "odom_frame:=''"],
        'same': ['-p', 'odom_frame:=base_link'],
        'top_ratio': ['-p', 'vo.top_ratio:=0.0'],
        'empty': ['-p', f'checkpoint:={empty}'],
        'fallback_missing': SMALL[:4] + ['-p', 'checkpoint:=/nonexistent/w.pth', '-p',
                                         'fallback_to_classical:=true', '-p', 'sync_slop:=0.1'],
        'fallback_dir': SMALL[:4] + ['-p', f'checkpoint:={folder}', '-p',
                                     'fallback_to_classical:=true'],
        'default': ['-r', '__node:=vo_default', '-p', 'device:=cpu'],
        'shipped': ['-r', '__node:=vo_shipped', '-p', 'device:=cpu', '-p',
                    'checkpoint:=default'],
    }
    procs = {name: start_node(ros_env, tmp_path, args, name) for name, args in runs.items()}
    values = None
    try:
        for name in ('no_odom', 'same', 'top_ratio', 'empty'):
            procs[name].wait(timeout=120)
        end = time.monotonic() + 120
        for name in ('fallback_missing', 'fallback_dir', 'default', 'shipped'):
            while 'visual odometry ready' not in procs[name].log_path.read_text():
                assert procs[name].poll() is None, procs[name].log_path.read_text()
                assert time.monotonic() < end, f'{name} node did not start'
                time.sleep(0.2)
        cam = Camera(ros_env, node_name='vo_shipped')
        try:
            values = cam.get_parameters('data.img_height', 'data.img_width')
        finally:
            cam.close()
    finally:
        results = {name: stop_node(p) for name, p in procs.items()}
    rc, log = results['no_odom']
    assert rc == 1 and 'odom_frame is empty' in log and 'Fix' in log, log
    rc, log = results['same']
    assert rc == 1 and "both 'base_link'" in log and 'Fix' in log, log
    rc, log = results['top_ratio']
    assert rc == 1 and 'vo.top_ratio' in log and '0.01' in log, log
    rc, log = results['empty']
    assert rc == 1 and 'empty (0 bytes)' in log and str(empty) in log, log
    rc, log = results['fallback_missing']
    assert rc == 0 and 'does not exist' in log and 'flow=dis' in log, log
    assert 'parameter sync_slop is no longer used' in log, log
    rc, log = results['fallback_dir']
    assert rc == 0 and 'is a directory' in log and 'flow=dis' in log, log
    rc, log = results['default']
    # the default is the classical pipeline (issue 12: it wins bench/vo_real.py)
    assert rc == 0 and 'flow=dis depth=none' in log and '(classical pipeline)' in log, log
    rc, log = results['shipped']
    assert rc == 0 and 'flow=net depth=net' in log and 'working resolution=192x64' in log, log
    # the parameters read back the size in use (the checkpoint's), not the config default
    assert [v.integer_value for v in values] == [64, 192], values


def test_vo_node_help_lists_every_parameter(capsys):
    from trianflow_ros.ros.node_params import node_param_specs
    from trianflow_ros.ros.vo_node import main
    assert main(['--help']) == 0
    out = capsys.readouterr().out
    assert out.startswith('usage: vo_node')
    for spec in node_param_specs():
        assert f'  {spec.name} (default' in out, spec.name


@pytest.mark.ros
def test_with_message_filters_the_info_cache_is_as_large_as_the_fallback(ros_env, monkeypatch):
    """A ROS install has message_filters: its Cache keeps as many camera_infos as ours."""
    import types
    import rclpy
    from trianflow_ros.ros import vo_node
    from trianflow_ros.ros.pairing import INFO_CACHE_SIZE, InfoCache

    class Subscriber:
        """Stand-in of message_filters.Subscriber (a subscription that signals callbacks)."""

        def __init__(self, node, msg_type, topic, **kwargs):
            self.callbacks = []
            self.qos = kwargs['qos_profile']
            self.sub = node.create_subscription(msg_type, topic, self.signal, **kwargs)

        def signal(self, msg):
            for cb in self.callbacks:
                cb(msg)

        def registerCallback(self, cb):  # noqa: N802 - message_filters API
            self.callbacks.append(cb)

    class Cache(Subscriber):
        """Stand-in of message_filters.Cache(input, cache_size)."""

        def __init__(self, source, cache_size=1):
            self.callbacks, self.cache_size, self.cache_msgs = [], cache_size, []
            source.registerCallback(self.add)

        def add(self, msg):
            self.cache_msgs = (self.cache_msgs + [msg])[-self.cache_size:]
            self.signal(msg)

    fake = types.SimpleNamespace(Subscriber=Subscriber, Cache=Cache)
    monkeypatch.setattr(vo_node, 'message_filters', fake)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(ros_env['ROS_DOMAIN_ID']))
    node = None
    try:
        node = vo_node.VONode(context=context, parameter_overrides=[
            rclpy.parameter.Parameter('vo.flow_provider', value='dis'),
            rclpy.parameter.Parameter('vo.depth_provider', value='none')])
        cache = node._pairer.infos.cache
        assert isinstance(cache, Cache) and cache.cache_size == INFO_CACHE_SIZE
        assert cache.cache_size == InfoCache().capacity
        assert node._mf_info.qos.depth >= INFO_CACHE_SIZE
        assert node.info['pairing'] == f'message_filters.Cache({INFO_CACHE_SIZE})'
        # an info through the filter chain reaches the pairer
        from std_msgs.msg import Header
        from trianflow_ros.ros.conversions import make_camera_info
        from node_harness import stamp_of
        info = make_camera_info(np.eye(3), 4, 4, Header(stamp=stamp_of(2.0)))
        node._mf_info.signal(info)
        assert node._pairer.latest_info == 2_000_000_000
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown(context=context)
