"""
``trianflow-play``: replay a rosbag2 (mcap or sqlite3) into live ROS 2 topics.

For machines without ``ros2 bag`` (``ros2 bag play BAG`` does the same where ROS 2 is
installed). Messages are published as recorded (raw CDR, no deserialisation) at the recorded
pace scaled by ``--rate``.

Examples::

    trianflow-play bags/kitti06
    trianflow-play bags/kitti06 --rate 0.5 --loop --topics /camera/image_raw /camera/camera_info
    trianflow-play bags/synthetic --wait-for-subscribers 1 --clock
    trianflow-play bags/synthetic --wait-for-subscribers 1 --sync-topic /vo_node/status

QoS: ``/tf_static`` (and any topic recorded as TRANSIENT_LOCAL) is published RELIABLE +
TRANSIENT_LOCAL, depth 1 (latched); ``/tf`` RELIABLE depth 100; everything else RELIABLE,
keep last 10 (what camera drivers offer).

Options for deterministic runs: ``--wait-for-subscribers N`` waits (``--wait-timeout`` s)
until every image topic (or the ``--wait-topics``) has N subscribers before the first
message; ``--sync-topic T`` publishes an image, then waits (``--sync-timeout`` s) for a
message on T with the image's stamp (a header stamp, or the 'stamp' value of a
diagnostic_msgs/DiagnosticStatus such as the VO node's ``/vo_node/status``, which also
reports LOST frames): lock-step replay, no frame dropped however slow the consumer;
``--start-paused`` waits for the ``~/resume`` service (std_srvs/Trigger; ``~/pause`` pauses
again). The player exits 0 at the end of the
bag or on SIGINT; the last printed line is one JSON object (messages per topic, wall time).
"""

import argparse
import importlib
import json
from pathlib import Path
import struct
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import rclpy
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.interfaces import QosDurability
from rosbags.rosbag2 import Reader

from trianflow_ros.ros.tool_main import parse_tool_args, shutdown

PROG = 'trianflow-play'
IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
#: A sync topic of this type is matched by its 'stamp' value (the VO node's ``~/status``).
STATUS_TYPE = 'diagnostic_msgs/msg/DiagnosticStatus'


class PlayerError(Exception):
    """A user error (exit status 2)."""


def message_class(msgtype: str):
    """
    Return the rclpy message class of a type name such as 'sensor_msgs/msg/Image'.

    :raise ImportError: the interface package is not installed.
    """
    pkg, kind, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{pkg}.{kind}'), name)


def header_stamp_ns(cdr: bytes) -> Optional[int]:
    """
    Return the stamp (ns) of a CDR message whose first field is a std_msgs/Header.

    Works on the raw bytes (Image, CameraInfo, Odometry, TFMessage is not one of them).

    :return: the stamp, or None when the buffer is too short.
    """
    if len(cdr) < 12:
        return None
    little = cdr[1] == 1                       # encapsulation CDR_LE = 0x0001
    sec, nsec = struct.unpack('<iI' if little else '>iI', bytes(cdr[4:12]))
    return sec * 10 ** 9 + nsec


def sync_key(stamp_ns: Optional[int]) -> Optional[int]:
    """Return the key stamps are matched by: microseconds (status messages carry text)."""
    return None if stamp_ns is None else int(round(stamp_ns / 1000))


def qos_for(topic: str, connection) -> QoSProfile:
    """Return the publisher QoS of a recorded topic (see the module docstring)."""
    offered = getattr(getattr(connection, 'ext', None), 'offered_qos_profiles', None) or []
    latched = topic.endswith('/tf_static') or topic == 'tf_static' or any(
        q.durability == QosDurability.TRANSIENT_LOCAL for q in offered)
    if latched:
        return QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL,
                          reliability=ReliabilityPolicy.RELIABLE)
    depth = 100 if topic in ('/tf', 'tf') else 10
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                      durability=DurabilityPolicy.VOLATILE,
                      reliability=ReliabilityPolicy.RELIABLE)


def parse_remaps(items: Sequence[str]) -> Dict[str, str]:
    """Parse 'FROM:=TO' remappings of topic names."""
    out = {}
    for item in items:
        src, sep, dst = item.partition(':=')
        if not sep or not src or not dst:
            raise PlayerError(f'--remap expects FROM:=TO, got {item!r}')
        out[src] = dst
    return out


class BagPlayer(Node):
    """A node that publishes the messages of a rosbag2 (see the module docstring)."""

    def __init__(self, bag: str, topics: Optional[Sequence[str]] = None,
                 remap: Optional[Dict[str, str]] = None, clock: bool = False,
                 sync_topic: Optional[str] = None, node_name: str = 'trianflow_player'):
        """
        Open the bag and create one publisher per selected topic.

        :param bag: rosbag2 folder.
        :param topics: topics to play (recorded names); all when None.
        :param remap: recorded name -> published name.
        :param clock: publish /clock (rosgraph_msgs/Clock) with the bag time.
        :param sync_topic: topic whose stamps pace the images (lock-step), or None.
        :param node_name: the node name.
        """
        super().__init__(node_name)
        path = Path(bag)
        if not (path / 'metadata.yaml').is_file():
            raise PlayerError(f'{bag}: not a rosbag2 folder (no metadata.yaml); write one '
                              'with trianflow-bag or ros2 bag record')
        self.reader = Reader(path)
        self.reader.open()
        remap = remap or {}
        recorded = {c.topic for c in self.reader.connections}
        if topics:
            missing = sorted(set(topics) - recorded)
            if missing:
                raise PlayerError(f'topics not in the bag: {missing}; it has {sorted(recorded)}')
        self.connections = []
        self.publishers_by_topic = {}
        self.out_names = {}
        self.skipped: Dict[str, str] = {}
        for c in self.reader.connections:
            if topics and c.topic not in topics:
                continue
            if c.topic in self.publishers_by_topic:
                self.connections.append(c)
                continue
            try:
                cls = message_class(c.msgtype)
            except (ImportError, AttributeError, ValueError) as e:
                self.skipped[c.topic] = f'{c.msgtype} not importable ({e})'
                self.get_logger().warning(f'skipping {c.topic}: {self.skipped[c.topic]}')
                continue
            name = remap.get(c.topic, c.topic)
            self.out_names[c.topic] = name
            self.publishers_by_topic[c.topic] = self.create_publisher(cls, name,
                                                                      qos_for(c.topic, c))
            self.connections.append(c)
        if not self.connections:
            raise PlayerError(f'{bag}: nothing to play (skipped: {self.skipped})')
        self.image_topics = sorted({c.topic for c in self.connections
                                    if c.msgtype in IMAGE_TYPES})
        self.clock_pub = None
        if clock:
            from rosgraph_msgs.msg import Clock
            self._clock_cls = Clock
            self.clock_pub = self.create_publisher(Clock, '/clock', QoSProfile(depth=10))
        self.paused = False
        from std_srvs.srv import Trigger
        self.create_service(Trigger, '~/pause', self._on_pause)
        self.create_service(Trigger, '~/resume', self._on_resume)
        self.sync_topic = sync_topic
        self.sync_stamps = set()
        if sync_topic:
            self._sync_type = None

    # ----------------------------------------------------------------------------------------
    def _on_pause(self, request, response):
        self.paused = True
        response.success, response.message = True, 'paused'
        return response

    def _on_resume(self, request, response):
        self.paused = False
        response.success, response.message = True, 'playing'
        return response

    def _on_sync(self, data) -> None:
        stamp = header_stamp_ns(data)
        if stamp is not None:
            self.sync_stamps.add(sync_key(stamp))

    def _on_sync_status(self, msg) -> None:
        for kv in msg.values:
            if kv.key == 'stamp':
                try:
                    self.sync_stamps.add(sync_key(round(float(kv.value) * 1e9)))
                except ValueError:
                    pass

    def ensure_sync_subscription(self, executor, timeout: float) -> None:
        """Subscribe (raw) to the sync topic once its type is known from the graph."""
        if not self.sync_topic or self._sync_type is not None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            types = dict(self.get_topic_names_and_types())
            name = self.resolve_topic_name(self.sync_topic)
            if name in types and types[name]:
                self._sync_type = types[name][0]
                cls = message_class(self._sync_type)
                qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
                if self._sync_type == STATUS_TYPE:
                    self.create_subscription(cls, self.sync_topic, self._on_sync_status, qos)
                else:
                    self.create_subscription(cls, self.sync_topic, self._on_sync, qos, raw=True)
                return
            executor.spin_once(timeout_sec=0.05)
        raise PlayerError(f'--sync-topic {self.sync_topic}: no publisher appeared within '
                          f'{timeout:.0f} s')

    def wait_for_subscribers(self, executor, count: int, topics: Sequence[str],
                             timeout: float) -> None:
        """Spin until every topic in ``topics`` (recorded names) has ``count`` subscribers."""
        if count <= 0:
            return
        pubs = [(t, self.publishers_by_topic[t]) for t in topics]
        deadline = time.monotonic() + timeout
        while True:
            short = [t for t, p in pubs if p.get_subscription_count() < count]
            if not short:
                return
            if time.monotonic() > deadline:
                raise PlayerError(f'--wait-for-subscribers {count}: {short} still short of '
                                  f'subscribers after {timeout:.0f} s')
            executor.spin_once(timeout_sec=0.05)

    def play(self, executor, rate: float = 1.0, loop: bool = False,
             sync_timeout: float = 10.0, start_paused: bool = False,
             log_every: float = 0.0) -> Tuple[Dict[str, int], float, int]:
        """
        Publish every message once (or forever with ``loop``) at the recorded pace / rate.

        :param executor: the executor that spins this node.
        :param rate: playback speed factor (> 0).
        :param loop: start again at the end.
        :param sync_timeout: seconds to wait for the sync topic after each image.
        :param start_paused: wait for ``~/resume`` before the first message.
        :param log_every: print progress every N s (0: never).
        :return: (messages per published topic, wall seconds, sync timeouts).
        """
        counts = {self.out_names[t]: 0 for t in self.publishers_by_topic}
        sync_misses = 0
        self.paused = start_paused
        if start_paused:
            self.get_logger().info('paused: call ~/resume (std_srvs/Trigger) to start')
        t_begin = time.monotonic()
        last_log = t_begin
        first = True
        while first or loop:
            first = False
            origin_bag = None
            origin_wall = time.monotonic()
            pending = None              # (bag time, key) of an image waiting for its sync
            for conn, bag_ns, data in self.reader.messages(connections=self.connections):
                if pending is not None and bag_ns > pending[0]:
                    # everything of the image's instant (its camera_info too) is out: wait
                    t_sync = time.monotonic()
                    sync_misses += not self._wait_sync(executor, pending[1], sync_timeout)
                    origin_wall += time.monotonic() - t_sync    # waits are not bag time
                    pending = None
                while self.paused:
                    paused_at = time.monotonic()
                    executor.spin_once(timeout_sec=0.05)
                    origin_wall += time.monotonic() - paused_at
                if origin_bag is None:
                    origin_bag = bag_ns
                target = origin_wall + (bag_ns - origin_bag) * 1e-9 / rate
                while True:
                    wait = target - time.monotonic()
                    if wait <= 0:
                        break
                    executor.spin_once(timeout_sec=min(wait, 0.05))
                if self.clock_pub is not None:
                    msg = self._clock_cls()
                    msg.clock.sec, msg.clock.nanosec = divmod(bag_ns, 10 ** 9)
                    self.clock_pub.publish(msg)
                self.publishers_by_topic[conn.topic].publish(bytes(data))
                counts[self.out_names[conn.topic]] += 1
                if self.sync_topic and conn.msgtype in IMAGE_TYPES:
                    pending = (bag_ns, sync_key(header_stamp_ns(data)))
                if log_every > 0 and time.monotonic() - last_log > log_every:
                    last_log = time.monotonic()
                    done = sum(counts.values())
                    self.get_logger().info(f'{done} messages published')
            if pending is not None:
                sync_misses += not self._wait_sync(executor, pending[1], sync_timeout)
        return counts, time.monotonic() - t_begin, sync_misses

    def _wait_sync(self, executor, key: Optional[int], timeout: float) -> bool:
        """Spin until the sync topic reported ``key`` (at most ``timeout`` s); True if it did."""
        deadline = time.monotonic() + timeout
        while key not in self.sync_stamps and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.01)
        return key in self.sync_stamps

    def linger(self, seconds: float) -> None:
        """Wait until reliable subscribers acknowledged everything (at most ``seconds``)."""
        deadline = time.monotonic() + seconds
        for pub in self.publishers_by_topic.values():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                pub.wait_for_all_acked(Duration(seconds=left))
            except Exception:  # noqa: B902 - not supported by every RMW
                pass

    def destroy_node(self) -> None:
        """Close the bag and destroy the node."""
        try:
            self.reader.close()
        finally:
            super().destroy_node()


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``trianflow-play``."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0],
                                     epilog=__doc__.split('\n\n', 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('bag', help='rosbag2 folder (mcap or sqlite3)')
    parser.add_argument('--rate', type=float, default=1.0, help='speed factor (default 1.0)')
    parser.add_argument('--loop', action='store_true', help='play again at the end, forever')
    parser.add_argument('--topics', nargs='+', default=None, help='play only these topics')
    parser.add_argument('--remap', nargs='+', default=[], metavar='FROM:=TO',
                        help='publish a recorded topic under another name')
    parser.add_argument('--start-paused', action='store_true',
                        help='wait for the ~/resume service (std_srvs/Trigger)')
    parser.add_argument('--wait-for-subscribers', type=int, default=0, metavar='N',
                        help='wait until the image topics (or --wait-topics) have N '
                             'subscribers before playing')
    parser.add_argument('--wait-topics', nargs='+', default=None,
                        help='recorded topics that --wait-for-subscribers checks')
    parser.add_argument('--wait-timeout', type=float, default=60.0,
                        help='seconds to wait for subscribers or the sync topic (default 60)')
    parser.add_argument('--sync-topic', default=None,
                        help='after each image wait for a message with its stamp on this topic')
    parser.add_argument('--sync-timeout', type=float, default=10.0,
                        help='seconds to wait for the sync message of one image (default 10)')
    parser.add_argument('--clock', action='store_true', help='publish /clock with the bag time')
    parser.add_argument('--linger', type=float, default=2.0,
                        help='seconds to wait at the end for reliable deliveries (default 2)')
    parser.add_argument('--node-name', default='trianflow_player', help='the node name')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``trianflow-play``; returns the exit status."""
    parser = build_parser()
    args = parse_tool_args(parser, argv)
    if args.rate <= 0:
        parser.exit(2, f'{PROG}: error: --rate must be > 0, got {args.rate}\n')
    rclpy.init()
    node = None
    executor = SingleThreadedExecutor()
    status = 0
    summary: Dict = {'bag': args.bag}
    try:
        node = BagPlayer(args.bag, args.topics, parse_remaps(args.remap), args.clock,
                         args.sync_topic, args.node_name)
        executor.add_node(node)
        wait_topics = args.wait_topics or node.image_topics or list(node.publishers_by_topic)
        unknown = sorted(set(wait_topics) - set(node.publishers_by_topic))
        if unknown:
            raise PlayerError(f'--wait-topics not played: {unknown}')
        node.wait_for_subscribers(executor, args.wait_for_subscribers, wait_topics,
                                  args.wait_timeout)
        node.ensure_sync_subscription(executor, args.wait_timeout)
        counts, wall, misses = node.play(executor, args.rate, args.loop, args.sync_timeout,
                                         args.start_paused)
        node.linger(args.linger)
        summary.update(messages=counts, wall_s=round(wall, 3), sync_timeouts=misses,
                       skipped=node.skipped)
        print(f'{PROG}: published {sum(counts.values())} messages in {wall:.1f} s '
              f'({", ".join(f"{k} {v}" for k, v in counts.items())})', flush=True)
    except PlayerError as e:
        print(f'{PROG}: error: {e}', file=sys.stderr, flush=True)
        status = 2
        summary['error'] = str(e)
    except (KeyboardInterrupt, ExternalShutdownException):
        summary['interrupted'] = True
    finally:
        shutdown(executor, [node])
    print(json.dumps(summary), flush=True)
    return status


if __name__ == '__main__':
    sys.exit(main())
