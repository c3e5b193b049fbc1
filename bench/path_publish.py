"""
Cost of publishing the node's path (nav_msgs/Path), before and after the bound.

Publishes a Path of growing length through a real DDS publisher (a subscriber in the same
process, LOCALHOST discovery, its own domain id) and times ``publish`` (message building and
serialisation, what the node's worker pays):

- ``per_length``: ms per publish at lengths 100, 1024, 10000;
- ``old``: the node before (a publish every frame, up to 10000 poses), mean and max ms per
  frame over ``--frames`` frames at ``--rate`` Hz;
- ``new``: the node's defaults now (``path_max_length`` 1024, ``path_publish_period`` 1 s).

The last line is one JSON object::

    scripts/with_env.sh python bench/path_publish.py --frames 12000
"""

import argparse
import json
import os
import time

from trianflow_ros.ros.path_keeper import PathKeeper

PER_LENGTH = (100, 1024, 10000)


def _pose(i: int):
    from geometry_msgs.msg import PoseStamped
    p = PoseStamped()
    p.header.frame_id = 'odom'
    p.header.stamp.sec = i
    p.pose.position.x = 0.1 * i
    p.pose.orientation.w = 1.0
    return p


def run_policy(pub, frames: int, rate: float, max_length: int, period: float):
    """Simulate ``frames`` frames at ``rate`` Hz; return per-frame publish ms (mean, max)."""
    from nav_msgs.msg import Path
    from std_msgs.msg import Header
    now = [0.0]
    keeper = PathKeeper(max_length, period, clock=lambda: now[0])
    costs = []
    for i in range(frames):
        now[0] = i / rate
        keeper.add(_pose(i), Header(frame_id='odom'))
        t0 = time.perf_counter()
        msg = keeper.take(Path)
        if msg is not None:
            pub.publish(msg)
        costs.append(1000.0 * (time.perf_counter() - t0))
    return sum(costs) / len(costs), max(costs)


def main(argv=None) -> dict:
    """Run the benchmark; print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--frames', type=int, default=12000, help='frames simulated per policy')
    ap.add_argument('--rate', type=float, default=10.0, help='frame rate (Hz)')
    args = ap.parse_args(argv)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    import rclpy
    from nav_msgs.msg import Path
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(os.environ.get('ROS_DOMAIN_ID', '231')))
    node = rclpy.create_node('path_bench', context=context)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(Path, 'path', qos)
    received = []
    node.create_subscription(Path, 'path', lambda m: received.append(len(m.poses)), qos)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    end = time.monotonic() + 10.0
    while pub.get_subscription_count() < 1 and time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    result = {'per_length_ms': {}}
    for n in PER_LENGTH:
        msg = Path()
        msg.header.frame_id = 'odom'
        msg.poses = [_pose(i) for i in range(n)]
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            pub.publish(msg)
            times.append(1000.0 * (time.perf_counter() - t0))
            executor.spin_once(timeout_sec=0.0)
        result['per_length_ms'][n] = round(sorted(times)[len(times) // 2], 2)
    for name, (length, period) in {'old': (10000, 0.0), 'new': (1024, 1.0)}.items():
        mean, worst = run_policy(pub, args.frames, args.rate, length, period)
        result[name] = {'path_max_length': length, 'path_publish_period': period,
                        'mean_ms_per_frame': round(mean, 3), 'max_ms': round(worst, 2)}
    result['frames'] = args.frames
    result['rate_hz'] = args.rate
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown(context=context)
    print(json.dumps(result))
    return result


if __name__ == '__main__':
    main()
