"""
What the node publishes for one frame: odometry, TF, path, depth, points and ``~/status``.

The base -> camera extrinsics of each frame come from TF (or ``base_to_camera``,
:class:`~trianflow_ros.ros.tf.ExtrinsicsProvider`); a change of their source is logged and, with
``publish_camera_tf``, the parameters' transform is sent on /tf_static. LOST frames publish
odometry with covariances of 1e6 (``publish_when_lost``) or nothing; never TF, path or depth.
"""

import types
from typing import Callable, Dict, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from nav_msgs.msg import Odometry, Path as PathMsg
import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from trianflow_ros.ros import conversions as conv
from trianflow_ros.ros.depth_output import depth_output
from trianflow_ros.ros.node_diagnostics import frame_status
from trianflow_ros.ros.odometry_output import OdometryOutput, OdometrySample
from trianflow_ros.ros.pairing import stamp_to_ns
from trianflow_ros.ros.path_keeper import PathKeeper
from trianflow_ros.ros.tf import ExtrinsicsProvider, make_broadcasters, odometry_transform
from trianflow_ros.vo.types import FrameResult, TrackingState


class FramePublisher:
    """The publishers of the node and the publishing of one :class:`FrameResult`."""

    def __init__(self, node, warn: Callable[..., None]):
        """
        Create the publishers, TF broadcasters and the extrinsics lookup of a node.

        :param node: the node (its ``params``; ``info['tf']`` and ``info['tf_listener']`` are
            set).
        :param warn: ``warn(key, text, period=None)``: a throttled warning.
        """
        p = self.params = node.params
        self.node, self._warn = node, warn
        self.odom = OdometryOutput(p['max_frame_interval'], p['twist_unknown_sigma'])
        self.path = PathKeeper(p['path_max_length'], p['path_publish_period'])
        self.extrinsics_source: Dict[str, str] = {}
        self.pub_odom = node.create_publisher(Odometry, 'odom', 10)
        self.pub_path = node.create_publisher(PathMsg, 'path', 10)
        self.pub_depth = node.create_publisher(Image, 'depth', 10)
        self.pub_depth_info = node.create_publisher(CameraInfo, 'depth/camera_info', 10)
        self.pub_points = node.create_publisher(PointCloud2, 'points', 5)
        self.pub_status = node.create_publisher(DiagnosticStatus, '~/status', 10)
        self.pub_diag = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.tf_broadcaster, self.static_broadcaster, node.info['tf'] = make_broadcasters(
            node, static=p['publish_camera_tf'])
        self.extrinsics = ExtrinsicsProvider(node, p['use_tf_extrinsics'], p['tf_timeout'],
                                             p['base_to_camera'])
        node.info['tf_listener'] = self.extrinsics.implementation

    def reset(self) -> None:
        """Forget the previous pose (twist) and the path: the next frame is a new origin."""
        self.odom.reset()
        self.path.reset()

    def camera_frame(self, image) -> str:
        """Return ``camera_frame`` or the image's frame_id (a warning when both are empty)."""
        camera_frame = self.params['camera_frame'] or image.header.frame_id
        if not camera_frame:
            self._warn('frame_id', "the image's header.frame_id is empty and camera_frame is "
                       'not set: odometry is published (base -> camera from base_to_camera), '
                       'depth and points are not. Fix: camera_frame:=<camera optical frame>, '
                       'or set frame_id in the camera driver')
        return camera_frame

    def base_to_camera(self, camera_frame: str) -> np.ndarray:
        """Return ``T_base_cam`` of a camera frame (TF or parameters); log a new source."""
        p = self.params
        T_bc, source, problem = self.extrinsics.lookup(p['base_frame'], camera_frame)
        if problem:
            self._warn('extrinsics', problem, period=60.0)
        before = self.extrinsics_source.get(camera_frame)
        if source != before:
            self.extrinsics_source[camera_frame] = source
            text = (f"base '{p['base_frame']}' -> camera '{camera_frame}' from {source}")
            if before == 'parameters':
                text += (': switched from base_to_camera; the published base pose changes '
                         'where the two differ (publish the mount before starting the node '
                         'to avoid this)')
            self.node.get_logger().info(text)
            if source == 'parameters' and self.static_broadcaster is not None and camera_frame:
                hdr = Header(stamp=self.node.get_clock().now().to_msg(),
                             frame_id=p['base_frame'])
                self.static_broadcaster.sendTransform(
                    conv.transform_msg(T_bc, hdr, camera_frame))
        return T_bc

    def publish(self, r: FrameResult, frame: types.SimpleNamespace
                ) -> Optional[OdometrySample]:
        """
        Publish odometry, TF, path and depth of one frame (not ``~/status``).

        :param r: the result of ``VisualOdometry.step``.
        :param frame: ``header`` (of the image), ``camera_frame``, ``T_bc``, ``hw`` (image
            size), ``K`` (at the image size), ``distortion``.
        :return: the odometry sample (None: nothing published).
        """
        p = self.params
        stamp_ns = stamp_to_ns(frame.header.stamp)
        sample = self.odom.sample(r, frame.T_bc, stamp_ns, p['publish_when_lost'])
        odom_header = Header(stamp=frame.header.stamp, frame_id=p['odom_frame'])
        if sample is not None:
            self.pub_odom.publish(conv.odometry_msg(
                sample.T_odom_base, sample.pose_covariance, odom_header, p['base_frame'],
                sample.linear, sample.angular, sample.twist_covariance))
        if r.state == TrackingState.LOST:
            what = ('odometry with covariance 1e6 is published' if p['publish_when_lost']
                    else 'no odometry is published')
            self._warn('lost', f'tracking LOST at {stamp_ns / 1e9:.3f} s: {r.message}; {what} '
                       'until it recovers')
            return sample
        if p['publish_tf']:
            self.tf_broadcaster.sendTransform(odometry_transform(
                sample.T_odom_base, odom_header, p['odom_frame'], p['base_frame'],
                p['invert_tf']))
        self.path.add(conv.pose_stamped_msg(sample.T_odom_base, odom_header), odom_header)
        self.flush_path()
        if r.depth is not None and frame.camera_frame and (p['publish_depth']
                                                           or p['publish_points']):
            self._publish_depth(r, frame)
        return sample

    def _publish_depth(self, r: FrameResult, frame: types.SimpleNamespace) -> None:
        p = self.params
        header = Header(stamp=frame.header.stamp, frame_id=frame.camera_frame)
        if p['publish_depth']:
            depth, K = depth_output(r.depth, r.K, frame.hw, frame.K, p['depth_resolution'])
            self.pub_depth.publish(conv.depth_to_image(depth, header))
            self.pub_depth_info.publish(conv.make_camera_info(
                K, depth.shape[0], depth.shape[1], header, frame.distortion))
        if p['publish_points']:
            pts = conv.depth_to_points(r.depth, r.K, p['points_stride'])
            self.pub_points.publish(conv.pointcloud2_msg(pts, header))

    def publish_status(self, r: FrameResult, latency_ms: Optional[float]) -> None:
        """Publish the ``~/status`` of one frame."""
        self.pub_status.publish(frame_status(self.node.get_name(), r, latency_ms))

    def publish_diagnostics(self, status: DiagnosticStatus) -> None:
        """Publish the periodic summary on ``/diagnostics``."""
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.pub_diag.publish(msg)

    def flush_path(self) -> None:
        """Publish the path when its period is over (:class:`PathKeeper`)."""
        msg = self.path.take(PathMsg)
        if msg is not None:
            self.pub_path.publish(msg)
