"""
Pairing of two message streams by header stamp (Image + CameraInfo) without message_filters.

:class:`StampSynchronizer` is what the node uses when ``message_filters`` is not importable.
Camera drivers and bag replay give an Image and its CameraInfo the same stamp, so the exact
mode (``slop`` = 0) covers the common case; ``slop`` > 0 pairs the nearest stamps within it.

Rules (two inputs; index 0 = image, 1 = camera_info):

- Each input keeps a queue of at most ``queue_size`` messages ordered by stamp; the oldest is
  dropped when it overflows (reason 'queue_full').
- A message whose stamp is not newer than the last pair emitted on its input is dropped at
  once (reason 'stale': out of order or duplicate).
- Exact mode: an image is paired with the info of the identical stamp.
- Approximate mode: an image is paired with the info nearest in time if the difference is at
  most ``slop`` and no better partner can still arrive (an info at or after the image's stamp
  has been seen, or the partner's stamp equals the image's).
- When a pair is emitted, every queued message older than its member on the same input can no
  longer be paired and is dropped (reason 'unmatched'). Nothing is kept without bound.

Everything dropped is reported through ``on_drop(index, msg, reason)`` so that a caller can
account for every message.
"""

import bisect
import threading
from typing import Any, Callable, List, Optional, Tuple, Union

#: reasons given to ``on_drop``.
DROP_REASONS = ('queue_full', 'stale', 'unmatched', 'flushed')


def stamp_to_ns(stamp) -> int:
    """Return a builtin_interfaces/Time (or anything with sec, nanosec) as integer ns."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class StampSynchronizer:
    """
    Pair the messages of two inputs by stamp (see the module docstring).

    Thread-safe: ``add`` may be called from several callback threads; the callbacks are
    called outside the lock, in the order of the pairs.
    """

    def __init__(self, callback: Callable[[Any, Any], None],
                 queue_size: Union[int, Tuple[int, int]] = 10, slop: float = 0.0,
                 on_drop: Optional[Callable[[int, Any, str], None]] = None):
        """
        Create the synchroniser.

        :param callback: called as ``callback(msg0, msg1)`` for every pair.
        :param queue_size: messages kept per input (>= 1): one number for both, or
            (images, infos). Camera infos are tiny and arrive before their (large) images when
            the transport lags, so the node keeps more of them (see ``vo_node``).
        :param slop: largest stamp difference of a pair in seconds (0 = identical stamps).
        :param on_drop: called as ``on_drop(index, msg, reason)`` for every dropped message.
        """
        sizes = (queue_size, queue_size) if isinstance(queue_size, int) else tuple(queue_size)
        if len(sizes) != 2 or min(sizes) < 1:
            raise ValueError(f'queue_size must be >= 1 (or a pair of them), got {queue_size}')
        if not slop >= 0:
            raise ValueError(f'slop must be >= 0 seconds, got {slop}')
        self.callback = callback
        self.on_drop = on_drop
        self.queue_sizes = (int(sizes[0]), int(sizes[1]))
        self.slop_ns = int(round(slop * 1e9))
        self._queues: Tuple[List[Tuple[int, int, Any]], ...] = ([], [])
        self._last = [None, None]
        self._seq = 0
        self._lock = threading.Lock()

    def pending(self, index: int) -> int:
        """Return how many messages of input ``index`` wait for a partner."""
        with self._lock:
            return len(self._queues[index])

    def add(self, index: int, msg: Any, stamp_ns: Optional[int] = None) -> None:
        """
        Offer a message of input ``index`` (0 or 1).

        :param msg: the message (its ``header.stamp`` is used unless ``stamp_ns`` is given).
        :param stamp_ns: its stamp in nanoseconds.
        """
        if index not in (0, 1):
            raise ValueError(f'index must be 0 or 1, got {index}')
        stamp = stamp_to_ns(msg.header.stamp) if stamp_ns is None else int(stamp_ns)
        dropped: List[Tuple[int, Any, str]] = []
        pairs: List[Tuple[Any, Any]] = []
        with self._lock:
            last = self._last[index]
            queue = self._queues[index]
            if (last is not None and stamp <= last) or any(s == stamp for s, _, _ in queue):
                dropped.append((index, msg, 'stale'))
            else:
                self._seq += 1
                bisect.insort(queue, (stamp, self._seq, msg))
                while len(queue) > self.queue_sizes[index]:
                    _, _, old = queue.pop(0)
                    dropped.append((index, old, 'queue_full'))
                self._match(pairs, dropped)
        self._report(pairs, dropped)

    def flush(self, index: int) -> int:
        """Drop every queued message of input ``index`` (reason 'flushed'); return how many."""
        with self._lock:
            queue = self._queues[index]
            dropped = [(index, m, 'flushed') for _, _, m in queue]
            queue.clear()
        self._report([], dropped)
        return len(dropped)

    def reset(self) -> None:
        """Forget the last emitted stamps (after a time jump, e.g. a bag loop); keep queues."""
        with self._lock:
            self._last = [None, None]

    # ----------------------------------------------------------------------------------------
    def _partner(self, stamp: int) -> Optional[int]:
        """Index in the info queue of the partner of an image stamp, or None (not yet)."""
        infos = self._queues[1]
        if not infos:
            return None
        if self.slop_ns == 0:
            for j, (s, _, _) in enumerate(infos):
                if s == stamp:
                    return j
            return None
        best = min(range(len(infos)), key=lambda j: (abs(infos[j][0] - stamp), -infos[j][0]))
        diff = abs(infos[best][0] - stamp)
        if diff > self.slop_ns:
            return None
        final = diff == 0 or infos[-1][0] >= stamp
        return best if final else None

    def _match(self, pairs: List[Tuple[Any, Any]], dropped: List[Tuple[int, Any, str]]) -> None:
        images, infos = self._queues
        i = 0
        while i < len(images):
            stamp = images[i][0]
            j = self._partner(stamp)
            if j is None:
                i += 1
                continue
            for _, _, old in images[:i]:
                dropped.append((0, old, 'unmatched'))
            for _, _, old in infos[:j]:
                dropped.append((1, old, 'unmatched'))
            img = images[i]
            info = infos[j]
            del images[:i + 1]
            del infos[:j + 1]
            self._last = [img[0], info[0]]
            pairs.append((img[2], info[2]))
            i = 0

    def _report(self, pairs: List[Tuple[Any, Any]], dropped: List[Tuple[int, Any, str]]) -> None:
        if self.on_drop is not None:
            for index, msg, reason in dropped:
                self.on_drop(index, msg, reason)
        for a, b in pairs:
            self.callback(a, b)
