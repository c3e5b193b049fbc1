"""
TF for the node: broadcasters (tf2_ros or a small fallback) and the base -> camera extrinsics.

Where ``tf2_ros`` is importable (a ROS install) its ``TransformBroadcaster`` and
``StaticTransformBroadcaster`` are used. Otherwise :class:`FallbackTransformBroadcaster`
publishes ``tf2_msgs/TFMessage`` on ``/tf`` (QoS depth 100, as tf2_ros does) and
:class:`FallbackStaticTransformBroadcaster` on ``/tf_static`` (depth 1, RELIABLE,
TRANSIENT_LOCAL: late joiners get the latched transforms).

Extrinsics: :class:`ExtrinsicsProvider` looks ``base_frame -> camera_frame`` up in TF (a
``tf2_ros.Buffer`` when tf2_ros is importable, else the node's own
:class:`~trianflow_ros.ros.tf_tree.TransformTree` fed from ``/tf_static`` and ``/tf``) and,
until TF has it, uses the ``base_to_camera`` parameter ``[x, y, z, roll, pitch, yaw]``. The
default :data:`OPTICAL_XYZ_RPY` is the REP-103 optical rotation with no offset: camera z
(forward) = base x, camera x (right) = base -y, camera y (down) = base -z.
"""

import math
import time
from typing import Dict, Iterable, Sequence, Tuple, Union

from geometry_msgs.msg import TransformStamped
import numpy as np
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time

from trianflow_ros.geometry.lie import se3_inverse, transform_from_xyz_rpy
from trianflow_ros.ros.conversions import transform_msg, transform_to_matrix

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


def make_broadcasters(node: Node, static: bool = True) -> Tuple[object, object, str]:
    """
    Return (TransformBroadcaster, StaticTransformBroadcaster or None, implementation name).

    tf2_ros classes when importable, else the fallbacks ('tf2_ros' or 'fallback'). With
    ``static`` False no /tf_static publisher is created at all (the node then cannot fight the
    robot's own static transforms).
    """
    if tf2_ros is not None:
        return (tf2_ros.TransformBroadcaster(node),
                tf2_ros.StaticTransformBroadcaster(node) if static else None, 'tf2_ros')
    return (FallbackTransformBroadcaster(node),
            FallbackStaticTransformBroadcaster(node) if static else None, 'fallback')


def odometry_transform(T_odom_base: np.ndarray, header, odom_frame: str, base_frame: str,
                       invert: bool = False) -> TransformStamped:
    """
    Return the TransformStamped the node broadcasts for a pose (``publish_tf``/``invert_tf``).

    :param T_odom_base: (4, 4) pose of the base in the odometry frame.
    :param header: stamp (its frame_id is replaced).
    :param odom_frame: the odometry frame.
    :param base_frame: the robot body frame.
    :param invert: False: ``odom_frame -> base_frame`` (REP-105, the default); True: the
        inverse, ``base_frame -> odom_frame``, so that the odometry frame hangs below a base
        whose parent is another node's odometry (wheel odometry, a filter): base_frame keeps
        one parent.
    """
    from std_msgs.msg import Header
    if invert:
        return transform_msg(se3_inverse(T_odom_base),
                             Header(stamp=header.stamp, frame_id=base_frame), odom_frame)
    return transform_msg(T_odom_base, Header(stamp=header.stamp, frame_id=odom_frame),
                         base_frame)


class ExtrinsicsProvider:
    """
    The base -> camera transform ``T_base_cam`` (maps camera-frame points into the base).

    Source order: TF (when ``use_tf``: a ``tf2_ros.Buffer`` where tf2_ros is importable, else
    a :class:`~trianflow_ros.ros.tf_tree.TransformTree` filled from ``/tf_static`` and
    ``/tf``), then the ``base_to_camera`` parameter value. A transform found in TF is kept;
    a failed lookup is **not** kept: every later frame looks again (without waiting) until
    the transform appears, and the parameter value is used meanwhile. Only the first lookup
    of a pair of frames waits up to ``timeout`` seconds.
    """

    def __init__(self, node: Node, use_tf: bool, timeout: float,
                 xyz_rpy: Sequence[float] = OPTICAL_XYZ_RPY):
        """
        Create the provider (and the TF listener when used).

        :param node: the node (its executor feeds the listener).
        :param use_tf: try TF first.
        :param timeout: seconds the first lookup of a pair of frames may wait.
        :param xyz_rpy: the parameter fallback [x, y, z, roll, pitch, yaw].
        """
        self.node = node
        self.timeout = float(timeout)
        self.T_param = transform_from_xyz_rpy(xyz_rpy)
        self.buffer = None
        self.tree = None
        self._listener = None
        self._found: Dict[Tuple[str, str], np.ndarray] = {}
        self._tried: set = set()
        if use_tf and tf2_ros is not None:
            self.buffer = tf2_ros.Buffer()
            self._listener = tf2_ros.TransformListener(self.buffer, node)
        elif use_tf and TFMessage is not None:
            from trianflow_ros.ros.tf_tree import TransformTreeListener
            self._listener = TransformTreeListener(node)
            self.tree = self._listener.tree

    @property
    def uses_tf(self) -> bool:
        """Return True when lookups go to TF."""
        return self.buffer is not None or self.tree is not None

    @property
    def implementation(self) -> str:
        """Return 'tf2_ros', 'own TF tree' or 'none' (parameters only)."""
        return 'tf2_ros' if self.buffer is not None else (
            'own TF tree' if self.tree is not None else 'none')

    def _lookup_tf(self, base_frame: str, camera_frame: str, timeout: float):
        if self.buffer is not None:
            tf = self.buffer.lookup_transform(base_frame, camera_frame, Time(),
                                              timeout=Duration(seconds=timeout))
            return transform_to_matrix(tf)
        end = time.monotonic() + timeout
        while True:
            T = self.tree.lookup(base_frame, camera_frame)
            if T is not None or time.monotonic() >= end:
                break
            time.sleep(0.02)
        if T is None:
            raise LookupError(f"'{camera_frame}' is not connected to '{base_frame}' in TF "
                              f'({len(self.tree.frames())} frames known)')
        return T

    def lookup(self, base_frame: str, camera_frame: str) -> Tuple[np.ndarray, str, str]:
        """
        Return ``(T_base_cam, source, problem)``; source 'tf' or 'parameters'.

        ``problem`` is '' when TF answered (or is not used), else why the lookup failed and
        how to fix it (for a throttled warning).
        """
        key = (base_frame, camera_frame)
        if key in self._found:
            return self._found[key].copy(), 'tf', ''
        if not self.uses_tf or not camera_frame:
            return self.T_param.copy(), 'parameters', ''
        timeout = 0.0 if key in self._tried else self.timeout
        self._tried.add(key)
        try:
            T = self._lookup_tf(base_frame, camera_frame, timeout)
            if np.all(np.isfinite(T)):
                self._found[key] = T
                return T.copy(), 'tf', ''
            problem = 'the transform is not finite'
        except Exception as e:  # tf2 raises several exception types
            problem = f'{type(e).__name__}: {e}'
        return self.T_param.copy(), 'parameters', (
            f"no TF '{base_frame}' -> '{camera_frame}' yet ({problem}); using the "
            'base_to_camera parameter and looking again with every frame. Fix: publish the '
            'camera mount (robot_state_publisher / static_transform_publisher), set '
            'camera_frame to the image frame in the TF tree, or use_tf_extrinsics:=false to '
            'use base_to_camera alone')
