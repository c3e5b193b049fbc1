"""
``trianflow-record``: record live topics to a rosbag2, and/or odometry and depth to files.

Bag mode (``-o BAG``): subscribes raw (no deserialisation) to the ``--topics`` as soon as they
appear in the graph (QoS matched to their publishers: TRANSIENT_LOCAL when one offers it) and
writes a rosbag2 with ``rosbags`` (receive time as the bag time; no ``ros2 bag`` needed).

Trajectory mode (``--trajectory DIR``): writes the ``nav_msgs/Odometry`` received on
``--odom-topic`` to ``DIR/poses_tum.txt`` and ``DIR/poses_kitti.txt`` (header stamps), as the
camera optical pose ``T_world_cam = inv(T_bc) T_odom_base T_bc`` (``--frame camera``, the
default, comparable with ``trianflow-vo``; ``T_bc`` from ``--base-to-camera x y z roll pitch
yaw``, default the REP-103 optical rotation, the node's default) or as ``odom -> base_link``
(``--frame base``); and every ``--depth-every``-th ``32FC1`` depth image of ``--depth-topic``
to ``DIR/depth/NNNNNN.png`` (16 bits, value = depth * 256, 0 = unknown; NNNNNN counts the
depth images received) and ``.npy`` (float32).

Both modes run until SIGINT (exit 0), ``--duration`` seconds or ``--count`` odometry
messages; files are written at the end. The last printed line is one JSON object.

Examples::

    trianflow-record -o bags/vo_out --topics /odom /path /tf /depth
    trianflow-record --trajectory out/live --odom-topic /odom --depth-topic /depth
"""

import argparse
import importlib
import json
from pathlib import Path
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import Writer

from trianflow_ros.eval.trajectory_io import Trajectory, write_kitti, write_tum
from trianflow_ros.geometry.lie import se3_inverse, transform_from_xyz_rpy
from trianflow_ros.ros.bag import (BagError, make_qos, prepare_output, STORAGES, T_BASE_OPTICAL,
                                   TYPESTORE_NAME)
from trianflow_ros.ros.conversions import pose_to_matrix
from trianflow_ros.ros.tool_main import parse_tool_args, shutdown

PROG = 'trianflow-record'
#: Depth PNG encoding: value = depth * DEPTH_PNG_SCALE (KITTI convention), 0 = unknown.
DEPTH_PNG_SCALE = 256.0


def stamp_ns(stamp) -> int:
    """Return integer nanoseconds of a builtin_interfaces/Time."""
    return int(stamp.sec) * 10 ** 9 + int(stamp.nanosec)


def camera_pose(T_odom_base: np.ndarray, T_base_cam: np.ndarray = T_BASE_OPTICAL) -> np.ndarray:
    """Return the camera optical pose ``inv(T_bc) T_odom_base T_bc`` (odometry = 1st camera)."""
    return se3_inverse(T_base_cam) @ T_odom_base @ T_base_cam


def depth_image_to_numpy(msg) -> np.ndarray:
    """Return the (H, W) float32 depth of a 32FC1 (or 16UC1 in mm) sensor_msgs/Image."""
    if msg.encoding == '32FC1':
        dtype, scale = np.dtype('<f4' if not msg.is_bigendian else '>f4'), 1.0
    elif msg.encoding in ('16UC1', 'mono16'):
        dtype, scale = np.dtype('<u2' if not msg.is_bigendian else '>u2'), 1e-3
    else:
        raise ValueError(f'depth image encoding {msg.encoding!r} is not 32FC1 or 16UC1')
    row = msg.width * dtype.itemsize
    buf = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)[:, :row]
    return (np.ascontiguousarray(buf).view(dtype).reshape(msg.height, msg.width)
            .astype(np.float32) * np.float32(scale))


def save_depth_png(folder: Path, number: int, depth: np.ndarray, npy: bool = True) -> Path:
    """Write a depth map as 16-bit PNG (depth * 256, 0 = unknown) and float32 .npy."""
    folder.mkdir(parents=True, exist_ok=True)
    d = np.nan_to_num(np.asarray(depth, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    png = np.clip(np.round(d * DEPTH_PNG_SCALE), 0, 65535).astype(np.uint16)
    path = folder / f'{number:06d}.png'
    if not cv2.imwrite(str(path), png):
        raise OSError(f'cannot write {path}')
    if npy:
        np.save(folder / f'{number:06d}.npy', d)
    return path


class TrajectoryRecorder(Node):
    """
    Record odometry (and depth) messages; write trajectory and depth files on demand.

    :ivar odom: list of (stamp_ns, T_odom_base (4, 4), receive time.monotonic()).
    :ivar depth_count: depth images received.
    :ivar depths: stamp_ns -> (H, W) float32 depth, for the stamps kept in memory.
    """

    def __init__(self, odom_topic: str = '/odom', depth_topic: Optional[str] = '/depth',
                 out: Optional[Path] = None, depth_every: int = 1, keep_depth: bool = False,
                 node_name: str = 'trianflow_trajectory_recorder', **kwargs):
        """
        Subscribe to the odometry and depth topics.

        :param odom_topic: nav_msgs/Odometry topic.
        :param depth_topic: sensor_msgs/Image depth topic, or None.
        :param out: folder for depth files written as they arrive (None: none written).
        :param depth_every: write every N-th depth image (0: none).
        :param keep_depth: keep every depth image in memory (``depths``).
        :param node_name: the node name.
        :param kwargs: passed to ``Node`` (e.g. ``context``).
        """
        super().__init__(node_name, **kwargs)
        from nav_msgs.msg import Odometry
        from sensor_msgs.msg import Image
        self.lock = threading.Lock()
        self.odom: List[Tuple[int, np.ndarray, float]] = []
        self.depths: Dict[int, np.ndarray] = {}
        self.depth_count = 0
        self.depth_files: List[str] = []
        self.out = Path(out) if out is not None else None
        self.depth_every = int(depth_every)
        self.keep_depth = keep_depth
        self.frame_ids: Tuple[str, str] = ('', '')
        reliable = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                              reliability=ReliabilityPolicy.RELIABLE)
        self.odom_sub = self.create_subscription(Odometry, odom_topic, self._on_odom, reliable)
        self.depth_sub = None
        if depth_topic:
            self.depth_sub = self.create_subscription(
                Image, depth_topic, self._on_depth,
                QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE))

    def _on_odom(self, msg) -> None:
        try:
            T = pose_to_matrix(msg.pose.pose)
        except ValueError as e:                     # a zero quaternion: no pose
            self.get_logger().warning(str(e), throttle_duration_sec=5.0)
            return
        with self.lock:
            self.frame_ids = (msg.header.frame_id, msg.child_frame_id)
            self.odom.append((stamp_ns(msg.header.stamp), T, time.monotonic()))

    def _on_depth(self, msg) -> None:
        try:
            depth = depth_image_to_numpy(msg)
        except ValueError as e:
            self.get_logger().warning(str(e), throttle_duration_sec=5.0)
            return
        with self.lock:
            n = self.depth_count
            self.depth_count += 1
            if self.keep_depth:
                self.depths[stamp_ns(msg.header.stamp)] = depth
        if self.out is not None and self.depth_every > 0 and n % self.depth_every == 0:
            self.depth_files.append(str(save_depth_png(self.out / 'depth', n, depth)))

    def trajectory(self, frame: str = 'camera',
                   T_base_cam: np.ndarray = T_BASE_OPTICAL) -> Optional[Trajectory]:
        """
        Return the recorded trajectory sorted by stamp (duplicates dropped), or None if empty.

        :param frame: 'camera' (optical poses, see the module docstring) or 'base'.
        :param T_base_cam: base -> camera transform for 'camera'.
        """
        with self.lock:
            items = sorted({s: T for s, T, _ in self.odom}.items())
        if not items:
            return None
        poses = np.stack([T for _, T in items])
        if frame == 'camera':
            poses = np.stack([camera_pose(T, T_base_cam) for T in poses])
        elif frame != 'base':
            raise ValueError(f"frame must be 'camera' or 'base', got {frame!r}")
        return Trajectory(poses, np.array([s for s, _ in items], dtype=np.float64) * 1e-9,
                          'odometry')

    def write(self, out: Path, frame: str = 'camera',
              T_base_cam: np.ndarray = T_BASE_OPTICAL) -> Dict:
        """Write poses_tum.txt and poses_kitti.txt into ``out``; return a summary."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        traj = self.trajectory(frame, T_base_cam)
        summary = {'odometry': 0 if traj is None else len(traj), 'depth': self.depth_count,
                   'depth_files': len(self.depth_files), 'out': str(out), 'frame': frame}
        if traj is not None:
            write_tum(out / 'poses_tum.txt', traj, overwrite=True)
            write_kitti(out / 'poses_kitti.txt', traj, overwrite=True)
        return summary


class BagRecorder(Node):
    """Record topics raw into a rosbag2 (see the module docstring)."""

    def __init__(self, out: Path, topics: Sequence[str], storage: str = 'mcap',
                 overwrite: bool = False, node_name: str = 'trianflow_bag_recorder'):
        """
        Open the bag and start looking for the topics.

        :param out: rosbag2 folder to create.
        :param topics: topic names to record.
        :param storage: 'mcap' or 'sqlite3'.
        :param overwrite: replace an existing bag folder.
        :param node_name: the node name.
        """
        super().__init__(node_name)
        from rosbags.typesys import get_typestore
        self.ts = get_typestore(TYPESTORE_NAME)
        out = Path(out)
        prepare_output(out, overwrite)
        out.parent.mkdir(parents=True, exist_ok=True)
        self.writer = Writer(out, version=8, storage_plugin=STORAGES[storage])
        self.writer.open()
        self.out = out
        self.lock = threading.Lock()
        self.wanted = [self.resolve_topic_name(t) for t in topics]
        self.connections: Dict[str, object] = {}
        self.counts: Dict[str, int] = {}
        self.closed = False
        self.timer = self.create_timer(0.1, self._discover)
        self._discover()

    def _discover(self) -> None:
        types = dict(self.get_topic_names_and_types())
        for topic in self.wanted:
            if topic in self.connections or not types.get(topic):
                continue
            msgtype = types[topic][0]
            if msgtype not in self.ts.types:
                self.get_logger().warning(f'cannot record {topic}: {msgtype} unknown to the '
                                          'typestore', once=True)
                continue
            try:
                pkg, kind, name = msgtype.split('/')
                cls = getattr(importlib.import_module(f'{pkg}.{kind}'), name)
            except (ImportError, AttributeError, ValueError) as e:
                self.get_logger().warning(f'cannot record {topic}: {e}', once=True)
                continue
            infos = self.get_publishers_info_by_topic(topic)
            latched = any(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
                          for i in infos)
            best_effort = any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
                              for i in infos)
            qos = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                             reliability=(ReliabilityPolicy.BEST_EFFORT if best_effort
                                          else ReliabilityPolicy.RELIABLE),
                             durability=(DurabilityPolicy.TRANSIENT_LOCAL if latched
                                         else DurabilityPolicy.VOLATILE))
            with self.lock:
                conn = self.writer.add_connection(
                    topic, msgtype, typestore=self.ts,
                    offered_qos_profiles=[make_qos(1 if latched else 10, latched)])
                self.connections[topic] = conn
                self.counts[topic] = 0
            self.create_subscription(cls, topic, lambda data, t=topic: self._on_message(t, data),
                                     qos, raw=True)
            self.get_logger().info(f'recording {topic} ({msgtype})')

    def _on_message(self, topic: str, data: bytes) -> None:
        with self.lock:
            if self.closed:
                return
            self.writer.write(self.connections[topic], time.time_ns(), data)
            self.counts[topic] += 1

    def close(self) -> Dict:
        """Close the bag; return a summary."""
        with self.lock:
            if not self.closed:
                self.closed = True
                self.writer.close()
        return {'bag': str(self.out), 'messages': dict(self.counts),
                'missing': [t for t in self.wanted if t not in self.connections]}


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``trianflow-record``."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0],
                                     epilog=__doc__.split('\n\n', 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-o', '--out', default=None, help='rosbag2 folder to write')
    parser.add_argument('--topics', nargs='+', default=[], help='topics to record into -o')
    parser.add_argument('--storage', choices=sorted(STORAGES), default='mcap',
                        help='bag storage (default mcap)')
    parser.add_argument('--trajectory', default=None, metavar='DIR',
                        help='write the odometry (TUM, KITTI) and depth PNGs into DIR')
    parser.add_argument('--odom-topic', default='/odom', help='odometry topic (default /odom)')
    parser.add_argument('--depth-topic', default='/depth',
                        help="depth topic (default /depth; '' for none)")
    parser.add_argument('--depth-every', type=int, default=1,
                        help='write every N-th depth image (0: none; default 1)')
    parser.add_argument('--frame', choices=('camera', 'base'), default='camera',
                        help='poses of the camera optical frame (default) or of base_link')
    parser.add_argument('--base-to-camera', type=float, nargs=6, default=None,
                        metavar=('X', 'Y', 'Z', 'ROLL', 'PITCH', 'YAW'),
                        help='base -> camera transform (default: REP-103 optical rotation)')
    parser.add_argument('--overwrite', action='store_true', help='replace existing outputs')
    parser.add_argument('--duration', type=float, default=None, help='stop after N seconds')
    parser.add_argument('--count', type=int, default=None,
                        help='stop after N odometry messages (trajectory mode)')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``trianflow-record``; returns the exit status."""
    parser = build_parser()
    args = parse_tool_args(parser, argv)
    if not args.out and not args.trajectory:
        parser.exit(2, f'{PROG}: error: give -o BAG (with --topics) and/or --trajectory DIR\n')
    if args.out and not args.topics:
        parser.exit(2, f'{PROG}: error: -o needs --topics\n')
    T_bc = (transform_from_xyz_rpy(args.base_to_camera) if args.base_to_camera
            else T_BASE_OPTICAL)
    if args.trajectory and not args.overwrite:
        existing = [n for n in ('poses_tum.txt', 'poses_kitti.txt', 'depth')
                    if (Path(args.trajectory) / n).exists()]
        if existing:
            parser.exit(2, f'{PROG}: error: {args.trajectory} already holds {existing}; pass '
                           '--overwrite\n')
    rclpy.init()
    executor = SingleThreadedExecutor()
    nodes: List[Node] = []
    summary: Dict = {}
    status = 0
    try:
        bag = traj = None
        if args.out:
            bag = BagRecorder(Path(args.out), args.topics, args.storage, args.overwrite)
            nodes.append(bag)
        if args.trajectory:
            traj = TrajectoryRecorder(args.odom_topic, args.depth_topic or None,
                                      Path(args.trajectory), args.depth_every)
            nodes.append(traj)
        for n in nodes:
            executor.add_node(n)
        t0 = time.monotonic()
        try:
            while rclpy.ok():
                executor.spin_once(timeout_sec=0.1)
                if args.duration is not None and time.monotonic() - t0 > args.duration:
                    break
                if args.count is not None and traj is not None and len(traj.odom) >= \
                        args.count:
                    break
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        if bag is not None:
            summary['bag'] = bag.close()
        if traj is not None:
            summary['trajectory'] = traj.write(Path(args.trajectory), args.frame, T_bc)
    except BagError as e:
        print(f'{PROG}: error: {e}', file=sys.stderr)
        status = 2
    finally:
        shutdown(executor, nodes)
    print(json.dumps(summary), flush=True)
    return status


if __name__ == '__main__':
    sys.exit(main())
