"""ROS 2 smoke test over real DDS: a node in a subprocess publishes, this process receives."""

from pathlib import Path
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.ros
def test_images_cross_processes(ros_env):
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    count, height, width = 20, 256, 832
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(ros_env['ROS_DOMAIN_ID']))
    node = Node('smoke_listener', context=context)
    received = []
    node.create_subscription(Image, 'image', received.append,
                             QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    pub = subprocess.Popen(
        [sys.executable, str(HERE / 'ros_fixture_publisher.py'), '--count', str(count),
         '--height', str(height), '--width', str(width)],
        env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + 30.0
        while len(received) < count and time.monotonic() < deadline and pub.poll() is None:
            executor.spin_once(timeout_sec=0.1)
        # The publisher reports when it has sent everything; only then stop it.
        ready, _, _ = select.select([pub.stdout], [], [], 10.0)
        published = pub.stdout.readline() if ready else ''
    finally:
        pub.send_signal(signal.SIGINT)
        try:
            out, err = pub.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            pub.kill()
            out, err = pub.communicate()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)

    assert pub.returncode == 0, (f'publisher exited {pub.returncode} (received '
                                 f'{len(received)}, its stdout {published!r} {out!r}): '
                                 f'{err[-2000:]}')
    assert 'published 20' in published + out, f'publisher stderr: {err[-2000:]}'
    # A reliable subscription must get every frame, in order, intact.
    assert len(received) == count, f'received {len(received)} of {count} frames'
    for i, msg in enumerate(received):
        assert msg.header.stamp.sec == 1000 + i
        assert (msg.height, msg.width, msg.encoding) == (height, width, 'rgb8')
        img = np.frombuffer(bytes(msg.data), np.uint8).reshape(height, width, 3)
        expected_rows = (i + np.arange(height)) % 256
        assert np.array_equal(img[:, 0, 0], expected_rows)
        assert np.all(img == img[:, :1, :1])
