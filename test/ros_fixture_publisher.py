"""
Fixture node for ROS tests: publishes numbered sensor_msgs/Image frames, then idles.

Run as a subprocess: ``python test/ros_fixture_publisher.py --count 20 --rate 10``. Frame i
has stamp (1000 + i) s, frame_id 'camera', and every byte of row r equal to (i + r) % 256.
It waits (up to --wait s) for a subscriber before publishing, and exits 0 on SIGINT.
"""

import argparse
import os
import signal
import sys
import time

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image


def make_frame(i: int, height: int, width: int) -> Image:
    """Frame number i (see the module docstring)."""
    msg = Image()
    msg.header.stamp.sec = 1000 + i
    msg.header.frame_id = 'camera'
    msg.height, msg.width, msg.encoding, msg.step = height, width, 'rgb8', width * 3
    rows = (i + np.arange(height, dtype=np.int64)) % 256
    msg.data = np.repeat(rows.astype(np.uint8), width * 3).tobytes()
    return msg


def _exit(rc: int) -> None:
    """End the process at once (see ``main``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument('--count', type=int, default=20)
    parser.add_argument('--rate', type=float, default=10.0)
    parser.add_argument('--height', type=int, default=256)
    parser.add_argument('--width', type=int, default=832)
    parser.add_argument('--wait', type=float, default=20.0)
    args = parser.parse_args()
    # SIGINT ends the process at once, wherever it is: rclpy's own handler plus destroy_node /
    # shutdown hung 2 exits in ~300 under load on these wheels (the test then killed the
    # publisher: exit -9). Status 0 once everything is published, 4 before.
    published = False
    signal.signal(signal.SIGINT, lambda *_: _exit(0 if published else 4))
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = Node('fixture_image_publisher')
    pub = node.create_publisher(
        Image, 'image', QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    deadline = time.monotonic() + args.wait
    while pub.get_subscription_count() == 0:
        if time.monotonic() > deadline:
            print('no subscriber appeared', file=sys.stderr)
            _exit(3)
        time.sleep(0.05)
    for i in range(args.count):
        if i:
            time.sleep(1.0 / args.rate)
        pub.publish(make_frame(i, args.height, args.width))
    published = True
    print(f'published {args.count}', flush=True)
    while True:                          # idle until SIGINT (DDS delivers in its own threads)
        time.sleep(0.05)


if __name__ == '__main__':
    sys.exit(main())
