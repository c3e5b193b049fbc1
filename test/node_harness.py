"""
Shared harness of the vo_node tests over real DDS (test_ros_node*.py).

The node runs in a subprocess (``start_node``); :class:`Camera`, an in-process node, plays the
camera (Image + CameraInfo with identical stamps, reliable, as a camera driver does), records
what vo_node publishes and calls its services. Waiting is done on what the node publishes
(odometry, status, diagnostics), never on fixed sleeps, so the tests hold on a loaded machine.
"""

import math
from pathlib import Path
import subprocess
import sys
import time

import numpy as np
import pytest

from trianflow_ros.data.synthetic import make_sequence
from trianflow_ros.ros.process import stop_process

REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 128, 416
#: The node's mechanics (topics, TF, reset, delivery, errors) are tested on the classical
#: pipeline, whose geometry these tests check exactly; the shipped learned default is covered by
#: test_ros_demo.py, test_launch.py and test_weights.py.
CLASSICAL = ['-p', 'vo.flow_provider:=dis', '-p', 'vo.depth_provider:=none']
SIZE = ['-p', f'data.img_height:={HEIGHT}', '-p', f'data.img_width:={WIDTH}']
SMALL = SIZE + CLASSICAL


@pytest.fixture(scope='module')
def sequence():
    """Twelve forward-driving frames of 128x416 with ground truth."""
    return make_sequence(kind='forward', num_frames=12, height=HEIGHT, width=WIDTH, seed=0)


def start_node(env, tmp_path: Path, args, name='node'):
    """Start ``python -m trianflow_ros.ros.vo_node --ros-args ARGS``; output to files."""
    out = open(tmp_path / f'{name}.out', 'w')
    cmd = [sys.executable, '-m', 'trianflow_ros.ros.vo_node', '--ros-args'] + list(args)
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO))
    proc.log_path = tmp_path / f'{name}.out'
    proc.log_file = out
    return proc


def stop_node(proc, timeout=20.0):
    """Stop the node with SIGINT; return (returncode, log text)."""
    stop_process(proc, timeout)
    proc.log_file.close()
    return proc.returncode, proc.log_path.read_text()


def stamp_of(i: float):
    from builtin_interfaces.msg import Time
    ns = int(round(i * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def ns_of(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class Camera:
    """In-process test node: publishes frames, records what vo_node publishes, calls it."""

    def __init__(self, env, node_name='vo_node'):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
        from nav_msgs.msg import Odometry, Path as PathMsg
        from rclpy.node import Node
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        from tf2_msgs.msg import TFMessage
        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=int(env['ROS_DOMAIN_ID']))
        self.node = Node('test_camera', context=self.context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_image = self.node.create_publisher(Image, 'image', QoSProfile(
            depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.pub_info = self.node.create_publisher(CameraInfo, 'camera_info', QoSProfile(
            depth=10, reliability=ReliabilityPolicy.RELIABLE))
        names = ('odom', 'path', 'depth', 'depth_info', 'tf', 'tf_static', 'diag', 'status',
                 'points')
        self.received = {k: [] for k in names}
        sub = self.node.create_subscription
        sub(Odometry, 'odom', self.received['odom'].append, reliable)
        sub(PathMsg, 'path', self.received['path'].append, reliable)
        sub(Image, 'depth', self.received['depth'].append, reliable)
        sub(CameraInfo, 'depth/camera_info', self.received['depth_info'].append, reliable)
        sub(TFMessage, '/tf', self.received['tf'].append, QoSProfile(depth=100))
        sub(TFMessage, '/tf_static', self.received['tf_static'].append, QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL))
        sub(DiagnosticArray, '/diagnostics', self.received['diag'].append, reliable)
        sub(PointCloud2, 'points', self.received['points'].append, reliable)
        sub(DiagnosticStatus, f'{node_name}/status', self.received['status'].append, reliable)
        self.node_name = node_name
        self.pub_static = None

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)

    def wait_for(self, predicate, timeout: float, what: str, proc=None):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = predicate()
            if value:
                return value
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f'vo_node exited ({proc.returncode}) while waiting for '
                                     f'{what}:\n{proc.log_path.read_text()[-3000:]}')
            self.executor.spin_once(timeout_sec=0.05)
        log = proc.log_path.read_text()[-3000:] if proc is not None else ''
        diag = self.last_diag()
        raise AssertionError(f'timed out after {timeout} s waiting for {what}\nlast diagnostics: '
                             f'{None if diag is None else diag[0]}\n{log}')

    def wait_connected(self, proc, timeout=60.0) -> None:
        """Wait until vo_node subscribes to image and camera_info and publishes odom."""
        self.wait_for(lambda: (self.pub_image.get_subscription_count() > 0
                               and self.pub_info.get_subscription_count() > 0
                               and self.node.count_publishers('odom') > 0
                               and self.node.count_publishers('/diagnostics') > 0),
                      timeout, 'vo_node to connect', proc)
        self.spin(0.3)

    def publish(self, t: float, image: np.ndarray, K, encoding='rgb8', info=True,
                info_hw=None, frame_id='camera_optical', info_after=False,
                distortion=None) -> None:
        """Publish an image and (``info``) its camera_info, before it or ``info_after``."""
        from std_msgs.msg import Header
        from trianflow_ros.ros.conversions import make_camera_info, numpy_to_image
        header = Header(stamp=stamp_of(t), frame_id=frame_id)
        msg = None
        if info:
            h, w = info_hw or image.shape[:2]
            msg = make_camera_info(np.asarray(K, dtype=np.float64), h, w, header, distortion)
        if msg is not None and not info_after:
            self.pub_info.publish(msg)
        self.pub_image.publish(numpy_to_image(image, encoding, header))
        if msg is not None and info_after:
            self.pub_info.publish(msg)

    def publish_info(self, t: float, K, hw) -> None:
        """Publish a camera_info alone."""
        from std_msgs.msg import Header
        from trianflow_ros.ros.conversions import make_camera_info
        header = Header(stamp=stamp_of(t), frame_id='camera_optical')
        self.pub_info.publish(make_camera_info(np.asarray(K, dtype=np.float64), hw[0], hw[1],
                                               header))

    def publish_static(self, parent: str, child: str, T: np.ndarray) -> None:
        """Publish a transform on /tf_static as the robot's robot_state_publisher does."""
        from std_msgs.msg import Header
        from tf2_msgs.msg import TFMessage
        from trianflow_ros.ros.conversions import transform_msg
        if self.pub_static is None:
            from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
            from tf2_msgs.msg import TFMessage as Msg
            self.pub_static = self.node.create_publisher(Msg, '/tf_static', QoSProfile(
                depth=1, reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.pub_static.publish(TFMessage(transforms=[transform_msg(
            T, Header(frame_id=parent), child)]))

    def publishers_of(self, topic: str):
        """Return the names of the nodes publishing on a topic."""
        return [i.node_name for i in self.node.get_publishers_info_by_topic(topic)]

    def get_parameters(self, *names):
        """Return the values of vo_node's parameters (rcl_interfaces ParameterValue)."""
        from rcl_interfaces.srv import GetParameters
        req = GetParameters.Request(names=list(names))
        return self.call(GetParameters, f'/{self.node_name}/get_parameters', req).values

    def frame_result(self, t: float):
        """Return the status of the frame with stamp t (None until processed)."""
        for s in self.received['status']:
            vals = {kv.key: kv.value for kv in s.values}
            if abs(float(vals['stamp']) - t) < 1e-6:
                return vals
        return None

    def odom_at(self, t: float):
        for m in self.received['odom']:
            if ns_of(m.header.stamp) == ns_of(stamp_of(t)):
                return m
        return None

    def last_diag(self):
        for msg in reversed(self.received['diag']):
            for s in msg.status:
                if s.name.endswith('visual odometry'):
                    return {kv.key: kv.value for kv in s.values}, s
        return None

    def accounting(self, received: int):
        """Wait predicate: the newest diagnostics show ``received`` frames, none pending."""
        d = self.last_diag()
        if d is None:
            return None
        vals = d[0]
        if int(vals['received']) == received and int(vals['pending']) == 0:
            return vals
        return None

    def call(self, srv_type, name: str, request, timeout=30.0):
        client = self.node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=timeout), f'service {name} not available'
        future = client.call_async(request)
        self.executor.spin_until_future_complete(future, timeout_sec=timeout)
        assert future.done(), f'service {name} did not answer'
        self.node.destroy_client(client)
        return future.result()

    def set_parameters(self, **values):
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter
        req = SetParameters.Request()
        req.parameters = [Parameter(k.replace('__', '.'), value=v).to_parameter_msg()
                          for k, v in values.items()]
        return self.call(SetParameters, f'/{self.node_name}/set_parameters', req).results

    def trigger(self, name: str):
        from std_srvs.srv import Trigger
        return self.call(Trigger, f'/{self.node_name}/{name}', Trigger.Request())

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


def optical_T_bc() -> np.ndarray:
    from trianflow_ros.ros.conversions import transform_from_xyz_rpy
    from trianflow_ros.ros.tf import OPTICAL_XYZ_RPY
    return transform_from_xyz_rpy(OPTICAL_XYZ_RPY)


def assert_finite_odometry(msgs) -> None:
    for m in msgs:
        p, o = m.pose.pose.position, m.pose.pose.orientation
        values = [p.x, p.y, p.z, o.x, o.y, o.z, o.w] + list(m.pose.covariance) + \
            list(m.twist.covariance) + [m.twist.twist.linear.x, m.twist.twist.angular.z]
        assert all(math.isfinite(v) for v in values), f'non-finite odometry {m}'
