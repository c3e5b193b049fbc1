"""
The published trajectory (nav_msgs/Path) at a bounded cost.

Publishing a Path costs time linear in its length (every pose is converted and serialised):
66 ms per publish at 10000 poses, measured on this project's 2-core CPU, paid on every frame
before. :class:`PathKeeper` bounds both factors: at most ``max_length`` poses (a ring buffer,
oldest dropped) and at most one publish per ``period`` seconds (0 = every frame); a timer
publishes the last change once the period is over, so the final pose always goes out.
``bench/path_publish.py`` measures the cost.
"""

from collections import deque
import threading
import time
from typing import Callable, Optional


class PathKeeper:
    """The poses of the path and when to publish them (thread-safe)."""

    def __init__(self, max_length: int, period: float,
                 clock: Callable[[], float] = time.monotonic):
        """
        Create an empty path.

        :param max_length: poses kept (>= 1).
        :param period: smallest time between two publishes (s); 0 = every change.
        :param clock: monotonic seconds.
        """
        self.clock = clock
        self._lock = threading.Lock()
        self._poses: deque = deque(maxlen=max(int(max_length), 1))
        self._header = None
        self._dirty = False
        self._last: Optional[float] = None
        self.period = float(period)

    def configure(self, max_length: int, period: float) -> None:
        """Change the length (keeps the newest poses) and the period."""
        with self._lock:
            if max(int(max_length), 1) != self._poses.maxlen:
                self._poses = deque(self._poses, maxlen=max(int(max_length), 1))
            self.period = float(period)

    def __len__(self) -> int:
        """Return the number of poses kept."""
        with self._lock:
            return len(self._poses)

    def add(self, pose_stamped, header) -> None:
        """Append a geometry_msgs/PoseStamped; ``header`` becomes the path's header."""
        with self._lock:
            self._poses.append(pose_stamped)
            self._header = header
            self._dirty = True

    def reset(self) -> None:
        """Forget every pose (odometry reset); the next pose is published at once."""
        with self._lock:
            self._poses.clear()
            self._dirty = False
            self._last = None

    def take(self, path_type):
        """
        Return a ``path_type`` message to publish now, or None.

        A message is due when poses were added since the last one and ``period`` seconds
        have passed since it (always for the first).

        :param path_type: the message class (nav_msgs/Path).
        """
        now = self.clock()
        with self._lock:
            if not self._dirty or (self._last is not None and now - self._last < self.period):
                return None
            self._dirty = False
            self._last = now
            header, poses = self._header, list(self._poses)
        msg = path_type()
        msg.header = header
        msg.poses = poses
        return msg
