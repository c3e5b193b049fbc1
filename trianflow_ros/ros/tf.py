"""
TF for the node: broadcasters (tf2_ros or a small fallback) and the base -> camera extrinsics.

Where ``tf2_ros`` is importable (a ROS install) its ``TransformBroadcaster`` and
``StaticTransformBroadcaster`` are used. Otherwise :class:`FallbackTransformBroadcaster`
publishes ``tf2_msgs/TFMessage`` on ``/tf`` (QoS depth 100, as tf2_ros does) and
:class:`FallbackStaticTransformBroadcaster` on ``/tf_static`` (depth 1, RELIABLE,
TRANSIENT_LOCAL: late joiners get the latched transforms).

Extrinsics: :class:`ExtrinsicsProvider` looks ``base_frame -> camera_frame`` up in TF (a
``tf2_ros.Buffer`` with a timeout) when tf2_ros is importable, and otherwise (or when the
lookup fails) uses the ``base_to_camera`` parameter ``[x, y, z, roll, pitch, yaw]``. The
default :data:`OPTICAL_XYZ_RPY` is the REP-103 optical rotation with no offset: camera z
(forward) = base x, camera x (right) = base -y, camera y (down) = base -z.
"""

import math
from typing import Iterable, Sequence, Tuple, Union

from geometry_msgs.msg import TransformStamped
import numpy as np
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time

from trianflow_ros.ros.conversions import transform_from_xyz_rpy, transform_to_matrix

try:  # a ROS install has tf2_ros; the PyPI wheels do not
    import tf2_ros
except ImportError:  # pragma: no cover - depends on the machine
    tf2_ros = None

try:
    from tf2_msgs.msg import TFMessage
except ImportError:  # pragma: no cover - depends on the machine
    TFMessage = None

#: base -> camera optical frame with no offset (REP-103), as [x, y, z, roll, pitch, yaw].
OPTICAL_XYZ_RPY = (0.0, 0.0, 0.0, -math.pi / 2, 0.0, -math.pi / 2)
#: QoS of /tf (tf2_ros TransformBroadcaster).
TF_QOS = QoSProfile(depth=100)
#: QoS of /tf_static (tf2_ros StaticTransformBroadcaster).
TF_STATIC_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL,
                           reliability=ReliabilityPolicy.RELIABLE)

Transforms = Union[TransformStamped, Iterable[TransformStamped]]


def _as_list(transforms: Transforms) -> list:
    if isinstance(transforms, TransformStamped):
        return [transforms]
    return list(transforms)


def _need_tf2_msgs() -> None:
    if TFMessage is None:
        raise ImportError('neither tf2_ros nor tf2_msgs is importable: install ros-<distro>-'
                          'tf2-ros (or build tf2_msgs, see docs) to publish TF')


class FallbackTransformBroadcaster:
    """Publish TransformStamped on ``/tf`` as ``tf2_msgs/TFMessage`` (tf2_ros stand-in)."""

    def __init__(self, node: Node, qos: QoSProfile = TF_QOS):
        """
        Create the /tf publisher.

        :param node: the node that publishes.
        :param qos: the publisher's QoS (tf2_ros: depth 100).
        """
        _need_tf2_msgs()
        self.pub = node.create_publisher(TFMessage, '/tf', qos)

    def sendTransform(self, transforms: Transforms) -> None:  # noqa: N802 - tf2_ros API
        """Publish one transform or a list of them in one TFMessage."""
        self.pub.publish(TFMessage(transforms=_as_list(transforms)))


class FallbackStaticTransformBroadcaster:
    """
    Latch transforms on ``/tf_static`` (tf2_ros stand-in).

    Like tf2_ros, every call republishes all transforms sent so far (one per child frame), so
    the single latched message always holds the whole static tree of this node.
    """

    def __init__(self, node: Node, qos: QoSProfile = TF_STATIC_QOS):
        """
        Create the /tf_static publisher.

        :param node: the node that publishes.
        :param qos: depth 1, RELIABLE, TRANSIENT_LOCAL.
        """
        _need_tf2_msgs()
        self.pub = node.create_publisher(TFMessage, '/tf_static', qos)
        self._by_child = {}

    def sendTransform(self, transforms: Transforms) -> None:  # noqa: N802 - tf2_ros API
        """Add or replace transforms (by child frame) and republish the whole set."""
        for t in _as_list(transforms):
            self._by_child[t.child_frame_id] = t
        self.pub.publish(TFMessage(transforms=list(self._by_child.values())))


def make_broadcasters(node: Node) -> Tuple[object, object, str]:
    """
    Return (TransformBroadcaster, StaticTransformBroadcaster, implementation name).

    tf2_ros classes when importable, else the fallbacks ('tf2_ros' or 'fallback').
    """
    if tf2_ros is not None:
        return (tf2_ros.TransformBroadcaster(node), tf2_ros.StaticTransformBroadcaster(node),
                'tf2_ros')
    return FallbackTransformBroadcaster(node), FallbackStaticTransformBroadcaster(node), \
        'fallback'


class ExtrinsicsProvider:
    """
    The base -> camera transform ``T_base_cam`` (maps camera-frame points into the base).

    Source order: TF (when ``use_tf`` and tf2_ros is importable; waits up to ``timeout`` s),
    then the ``xyz_rpy`` parameter value.
    """

    def __init__(self, node: Node, use_tf: bool, timeout: float,
                 xyz_rpy: Sequence[float] = OPTICAL_XYZ_RPY):
        """
        Create the provider (and a tf2_ros Buffer + TransformListener when used).

        :param node: the node (its executor feeds the listener).
        :param use_tf: try TF first.
        :param timeout: seconds a lookup may wait for the transform.
        :param xyz_rpy: the parameter fallback [x, y, z, roll, pitch, yaw].
        """
        self.node = node
        self.timeout = float(timeout)
        self.T_param = transform_from_xyz_rpy(xyz_rpy)
        self.buffer = None
        self._listener = None
        if use_tf and tf2_ros is not None:
            self.buffer = tf2_ros.Buffer()
            self._listener = tf2_ros.TransformListener(self.buffer, node)

    @property
    def uses_tf(self) -> bool:
        """Return True when lookups go to TF."""
        return self.buffer is not None

    def lookup(self, base_frame: str, camera_frame: str) -> Tuple[np.ndarray, str]:
        """
        Return ``(T_base_cam, source)`` with source 'tf' or 'parameters'.

        A failed TF lookup logs a warning that names both frames and the fix, then the
        parameter value is used.
        """
        if self.buffer is not None and camera_frame:
            try:
                tf = self.buffer.lookup_transform(base_frame, camera_frame, Time(),
                                                  timeout=Duration(seconds=self.timeout))
                T = transform_to_matrix(tf)
                if np.all(np.isfinite(T)):
                    return T, 'tf'
            except Exception as e:  # tf2 raises several exception types
                self.node.get_logger().warning(
                    f"no TF '{base_frame}' -> '{camera_frame}' within {self.timeout:.1f} s "
                    f'({type(e).__name__}: {e}); using the base_to_camera parameter. Fix: '
                    'publish the camera mount (robot_state_publisher / static_transform_'
                    'publisher) or set camera_frame to the image frame in the TF tree')
        return self.T_param.copy(), 'parameters'
