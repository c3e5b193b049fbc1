"""
Pairing of images with their intrinsics (camera_info, or the ``camera_matrix`` parameter).

No correctly paired frame is dropped, at any rate and in any arrival order. For an image of
stamp ``t`` the source of K is, in this order:

1. ``exact``: the camera_info with the stamp ``t`` (camera drivers and bags give an image and
   its camera_info the same stamp);
2. ``latest``: otherwise the newest camera_info whose stamp is within ``max_age`` seconds of
   ``t`` (an info lost or late, a gap in the info stream, a driver whose stamps differ);
3. ``matrix``: otherwise the ``camera_matrix`` parameter when it is set;
4. otherwise the image is dropped (reason ``no_camera_info``) with a message that says what
   was missing.

An image whose exact info is not there yet waits up to ``wait`` seconds (wall clock) for it:
camera_info usually travels beside its image and may arrive just after it (or just before, as
it is much smaller). Until the first camera_info has arrived it waits up to ``first_wait``
instead: at start-up DDS discovery can deliver the first infos a second after the first
images, and those images are then paired with the first info (rule 2). It waits only when that
can help: when an info stream is alive (a fresh info exists) or when nothing else could be
used; when only ``camera_matrix`` remains it is used at once. A waiting image is decided
early when an info with a newer stamp arrives (infos of one
topic arrive in order, so its own info was lost) and at its deadline (:meth:`FramePairer.poll`,
called by a timer). Images are always handed on in arrival order.

The infos are kept in an :class:`InfoCache` (the newest ``capacity`` by stamp), or in a
``message_filters.Cache`` of the same size when message_filters is importable
(:class:`MessageFiltersInfoCache`). Nothing here imports rclpy at module level: the logic is
tested without ROS.
"""

import bisect
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

#: How K was found for an image (FramePairer emits these).
SOURCES = ('exact', 'latest', 'matrix')
#: camera_info messages kept (by stamp): infos are tiny and overtake their multi-megabyte
#: images when the transport lags, so many more are kept than images.
INFO_CACHE_SIZE = 200


def stamp_to_ns(stamp) -> int:
    """Return a builtin_interfaces/Time (or anything with sec, nanosec) as integer ns."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class InfoCache:
    """The newest ``capacity`` camera_info messages by stamp (own implementation)."""

    def __init__(self, capacity: int = INFO_CACHE_SIZE):
        """
        Create an empty cache.

        :param capacity: messages kept (>= 1); the oldest stamp goes first.
        """
        if capacity < 1:
            raise ValueError(f'capacity must be >= 1, got {capacity}')
        self.capacity = int(capacity)
        self._stamps: List[int] = []
        self._msgs: Dict[int, Any] = {}

    def __len__(self) -> int:
        """Return the number of messages kept."""
        return len(self._stamps)

    def add(self, msg: Any, stamp_ns: Optional[int] = None) -> None:
        """Keep a message (a repeated stamp replaces the earlier message)."""
        stamp = stamp_to_ns(msg.header.stamp) if stamp_ns is None else int(stamp_ns)
        if stamp not in self._msgs:
            bisect.insort(self._stamps, stamp)
        self._msgs[stamp] = msg
        while len(self._stamps) > self.capacity:
            del self._msgs[self._stamps.pop(0)]

    def exact(self, stamp_ns: int) -> Optional[Any]:
        """Return the message with this stamp, or None."""
        return self._msgs.get(int(stamp_ns))

    def newest_within(self, stamp_ns: int, max_age_ns: int) -> Optional[Tuple[int, Any]]:
        """Return (stamp, message) of the newest stamp within ``max_age_ns`` of ``stamp_ns``."""
        hi = bisect.bisect_right(self._stamps, int(stamp_ns) + int(max_age_ns))
        if hi == 0:
            return None
        s = self._stamps[hi - 1]
        if abs(s - int(stamp_ns)) > max_age_ns:
            return None
        return s, self._msgs[s]

    def clear(self) -> None:
        """Forget every message."""
        self._stamps.clear()
        self._msgs.clear()


class MessageFiltersInfoCache:
    """
    The :class:`InfoCache` interface over a ``message_filters.Cache`` (a ROS install).

    Only the documented Cache API is used: ``Cache(input, cache_size)`` and
    ``getInterval(from, to)`` with ``rclpy.time.Time`` bounds of the ROS clock type (the
    type ``Time.from_msg`` gives the cached stamps). Messages are added by the Cache's own
    input connection (a ``message_filters.Subscriber``); :meth:`add` is not used.
    """

    def __init__(self, message_filters, source, capacity: int = INFO_CACHE_SIZE):
        """
        Create the cache on a message_filters input.

        :param message_filters: the imported module.
        :param source: the input filter (``message_filters.Subscriber`` of CameraInfo).
        :param capacity: ``cache_size``, the same as the own cache's.
        """
        self.capacity = int(capacity)
        self.cache = message_filters.Cache(source, cache_size=self.capacity)

    def __len__(self) -> int:
        """Return the number of messages kept (0 when the Cache does not tell)."""
        return len(getattr(self.cache, 'cache_msgs', ()))

    def add(self, msg: Any, stamp_ns: Optional[int] = None) -> None:
        """Do nothing: the Cache is fed by its input connection."""

    @staticmethod
    def _time(ns: int):
        from rclpy.clock import ClockType
        from rclpy.time import Time
        return Time(nanoseconds=max(int(ns), 0), clock_type=ClockType.ROS_TIME)

    def _interval(self, lo_ns: int, hi_ns: int) -> List[Tuple[int, Any]]:
        msgs = self.cache.getInterval(self._time(lo_ns), self._time(hi_ns)) or []
        return sorted(((stamp_to_ns(m.header.stamp), m) for m in msgs), key=lambda x: x[0])

    def exact(self, stamp_ns: int) -> Optional[Any]:
        """Return the message with this stamp, or None."""
        found = self._interval(stamp_ns, stamp_ns)
        return found[-1][1] if found else None

    def newest_within(self, stamp_ns: int, max_age_ns: int) -> Optional[Tuple[int, Any]]:
        """Return (stamp, message) of the newest stamp within ``max_age_ns`` of ``stamp_ns``."""
        found = self._interval(stamp_ns - max_age_ns, stamp_ns + max_age_ns)
        return found[-1] if found else None

    def clear(self) -> None:
        """Forget what can be forgotten (the Cache has no clear: stale stamps age out)."""


class _Held:
    __slots__ = ('stamp', 'image', 'deadline')

    def __init__(self, stamp: int, image: Any, deadline: float):
        self.stamp = stamp
        self.image = image
        self.deadline = deadline


class FramePairer:
    """
    Decide the intrinsics source of every image (see the module docstring).

    Thread-safe: the callbacks ``emit`` and ``drop`` are called outside the lock, in the
    order of the images.
    """

    def __init__(self, emit: Callable[[Any, Optional[Any], str], None],
                 drop: Callable[[Any, str], None], *, wait: float, max_age: float,
                 first_wait: Optional[float] = None, infos=None, max_held: int = 10,
                 matrix_available: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.monotonic):
        """
        Create the pairer.

        :param emit: ``emit(image, info or None, source)``, source in :data:`SOURCES` (None
            info for 'matrix').
        :param drop: ``drop(image, text)`` for an image without any intrinsics; ``text`` says
            what was missing.
        :param wait: seconds an image waits for the info of its stamp (0 = never waits).
        :param max_age: largest |image stamp - info stamp| (s) of a 'latest' info.
        :param first_wait: seconds an image waits while no camera_info has arrived yet
            (default: ``wait``).
        :param infos: the info store (:class:`InfoCache` by default).
        :param max_held: images waiting at most; an overflow decides the oldest at once.
        :param matrix_available: whether ``camera_matrix`` is set (asked when deciding).
        :param clock: monotonic seconds (tests pass their own).
        """
        first_wait = wait if first_wait is None else first_wait
        if min(wait, max_age, first_wait) < 0:
            raise ValueError(f'wait, first_wait and max_age must be >= 0, got {wait}, '
                             f'{first_wait}, {max_age}')
        self.first_wait = float(first_wait)
        self.emit = emit
        self.drop = drop
        self.wait = float(wait)
        self.max_age_ns = int(round(float(max_age) * 1e9))
        self.infos = infos if infos is not None else InfoCache()
        self.max_held = max(int(max_held), 1)
        self.matrix_available = matrix_available
        self.clock = clock
        self.latest_info: Optional[int] = None
        self.counts = dict.fromkeys(SOURCES, 0)
        self._held: List[_Held] = []
        # decided under the lock but not yet handed on (emit / drop run outside it): still
        # pending, so that the node's accounting never sees such an image nowhere
        self._in_flight = 0
        self._lock = threading.Lock()

    def configure(self, wait: float, first_wait: float, max_age: float) -> None:
        """Change the waits and the largest age (applies to images that arrive later)."""
        with self._lock:
            self.wait, self.first_wait = float(wait), float(first_wait)
            self.max_age_ns = int(round(float(max_age) * 1e9))

    def pending(self) -> int:
        """Return how many images wait for their camera_info or are being handed on."""
        with self._lock:
            return len(self._held) + self._in_flight

    def add_info(self, msg: Any, stamp_ns: Optional[int] = None) -> None:
        """Offer a camera_info; decide the images it completes or makes hopeless."""
        stamp = stamp_to_ns(msg.header.stamp) if stamp_ns is None else int(stamp_ns)
        out: List[Tuple[str, Any, Any, str]] = []
        with self._lock:
            self.infos.add(msg, stamp)
            if self.latest_info is None or stamp > self.latest_info:
                self.latest_info = stamp
            while self._held and self._held[0].stamp <= stamp:
                out.append(self._decide(self._held.pop(0)))
        self._report(out)

    def add_image(self, image: Any, stamp_ns: int) -> None:
        """Offer an image: paired now, or held for its camera_info (see the module docstring)."""
        stamp = int(stamp_ns)
        out: List[Tuple[str, Any, Any, str]] = []
        with self._lock:
            if self.infos.exact(stamp) is not None or not self._should_wait(stamp):
                out += [self._decide(h) for h in self._held]
                self._held.clear()
                out.append(self._decide(_Held(stamp, image, 0.0)))
            else:
                wait = self.first_wait if self.latest_info is None else self.wait
                self._held.append(_Held(stamp, image, self.clock() + wait))
                while len(self._held) > self.max_held:
                    out.append(self._decide(self._held.pop(0)))
        self._report(out)

    def poll(self) -> None:
        """Decide the images whose wait is over (call periodically)."""
        now = self.clock()
        out: List[Tuple[str, Any, Any, str]] = []
        with self._lock:
            while self._held and self._held[0].deadline <= now:
                out.append(self._decide(self._held.pop(0)))
        self._report(out)

    def flush(self) -> None:
        """Decide every waiting image now (before a reset or at shutdown)."""
        with self._lock:
            out = [self._decide(h) for h in self._held]
            self._held.clear()
        self._report(out)

    # ----------------------------------------------------------------------------------------
    def _fresh(self, stamp: int) -> Optional[Tuple[int, Any]]:
        return self.infos.newest_within(stamp, self.max_age_ns)

    def _should_wait(self, stamp: int) -> bool:
        if self._held:
            return True          # keep the order: behind the ones already waiting
        if (self.first_wait if self.latest_info is None else self.wait) <= 0:
            return False
        return self._fresh(stamp) is not None or not self.matrix_available()

    def _decide(self, held: _Held) -> Tuple[str, Any, Any, str]:
        """
        Return ('emit', image, info, source) or ('drop', image, None, text); hold the lock.

        The image is in flight (still pending) until :meth:`_report` has handed it on.
        """
        self._in_flight += 1
        info = self.infos.exact(held.stamp)
        source = 'exact'
        if info is None:
            fresh = self._fresh(held.stamp)
            info, source = (fresh[1], 'latest') if fresh is not None else (None, 'matrix')
        if info is not None or self.matrix_available():
            self.counts[source] += 1
            return 'emit', held.image, info, source
        if self.latest_info is None:
            text = 'no camera_info has been received'
        else:
            age = (held.stamp - self.latest_info) * 1e-9
            text = (f'the newest camera_info is {abs(age):.3f} s '
                    f'{"older" if age >= 0 else "newer"} than the image, more than '
                    f'camera_info_max_age={self.max_age_ns * 1e-9:g} s')
        return 'drop', held.image, None, text

    def _report(self, out: List[Tuple[str, Any, Any, str]]) -> None:
        for kind, image, info, extra in out:
            try:
                if kind == 'emit':
                    self.emit(image, info, extra)
                else:
                    self.drop(image, extra)
            finally:
                with self._lock:
                    self._in_flight -= 1
