"""
A small TF tree for lookups where tf2_ros is not importable (the PyPI wheels).

:class:`TransformTree` keeps the newest transform of every child frame (static or not) and
answers ``lookup(target, source)`` -> ``T_target_source`` by walking both frames up to their
common ancestor, as tf2 does for the latest time. It also notices a frame that gets two
different parents (two nodes publishing e.g. ``odom -> base_link``), the mistake TF users
meet most. :class:`TransformTreeListener` fills a tree from ``/tf_static`` (transient local,
as tf2_ros subscribes) and ``/tf``. With tf2_ros importable the node uses ``tf2_ros.Buffer``
and ``TransformListener`` instead.
"""

import threading
from typing import Dict, Optional, Tuple

import numpy as np

from trianflow_ros.geometry.lie import se3_inverse

#: Longest chain of frames followed (a loop in a broken tree must not hang the lookup).
MAX_DEPTH = 64


class TransformTree:
    """The newest transform of every child frame; lookups through the tree."""

    def __init__(self):
        """Create an empty tree."""
        self._parent: Dict[str, Tuple[str, np.ndarray]] = {}
        self.conflicts: Dict[str, Tuple[str, str]] = {}
        self._lock = threading.Lock()

    def put(self, parent: str, child: str, T_parent_child: np.ndarray) -> None:
        """Store ``T_parent_child`` (replaces the child's earlier transform)."""
        parent, child = parent.lstrip('/'), child.lstrip('/')
        if not parent or not child or parent == child:
            return
        T = np.asarray(T_parent_child, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            return
        with self._lock:
            old = self._parent.get(child)
            if old is not None and old[0] != parent:
                self.conflicts[child] = (old[0], parent)
            self._parent[child] = (parent, T.copy())

    def frames(self) -> set:
        """Return every frame the tree knows."""
        with self._lock:
            return set(self._parent) | {p for p, _ in self._parent.values()}

    def _chain(self, frame: str) -> Dict[str, np.ndarray]:
        """Return {ancestor: T_ancestor_frame} for the frame and every ancestor."""
        out = {frame: np.eye(4)}
        T = np.eye(4)
        for _ in range(MAX_DEPTH):
            link = self._parent.get(frame)
            if link is None:
                break
            frame, T = link[0], link[1] @ T
            if frame in out:
                break                       # a loop: stop
            out[frame] = T
        return out

    def lookup(self, target: str, source: str) -> Optional[np.ndarray]:
        """
        Return ``T_target_source`` (maps points of ``source`` into ``target``), or None.

        :param target: the frame the result maps into (e.g. base_link).
        :param source: the frame the result maps from (e.g. the camera optical frame).
        """
        target, source = target.lstrip('/'), source.lstrip('/')
        if not target or not source:
            return None
        if target == source:
            return np.eye(4)
        with self._lock:
            up_source = self._chain(source)
            up_target = self._chain(target)
        for frame, T_anc_source in up_source.items():
            T_anc_target = up_target.get(frame)
            if T_anc_target is not None:
                return se3_inverse(T_anc_target) @ T_anc_source
        return None


class TransformTreeListener:
    """Fill a :class:`TransformTree` from ``/tf_static`` and ``/tf`` (tf2_ros stand-in)."""

    def __init__(self, node, tree: Optional[TransformTree] = None):
        """
        Subscribe to ``/tf_static`` (depth 100, reliable, transient local) and ``/tf``.

        :param node: the rclpy node.
        :param tree: the tree to fill (a new one by default).
        :raises ImportError: tf2_msgs is not importable.
        """
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from tf2_msgs.msg import TFMessage
        self.tree = tree if tree is not None else TransformTree()
        static_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.subs = [node.create_subscription(TFMessage, '/tf_static', self._on_tf, static_qos),
                     node.create_subscription(TFMessage, '/tf', self._on_tf,
                                              QoSProfile(depth=100))]

    def _on_tf(self, msg) -> None:
        from trianflow_ros.ros.conversions import transform_to_matrix
        for t in msg.transforms:
            try:
                T = transform_to_matrix(t)
            except ValueError:          # a zero quaternion: not a transform
                continue
            self.tree.put(t.header.frame_id, t.child_frame_id, T)
