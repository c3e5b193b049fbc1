"""
The node's newest-frame buffer and its worker thread.

The subscription callbacks only pair and :meth:`FrameQueue.submit` the frame: stamps must
increase (a duplicate or out-of-order stamp is dropped; a forward jump larger than
``max_frame_interval`` is warned about), ``frame_skip`` keeps every N-th frame, a paused node
counts the frame and drops it. The kept frame goes into a one-slot buffer; a frame arriving
while the slot is full replaces the one waiting there (counted as skipped_busy), so nothing
queues without bound. The worker thread takes the frame with the reset and the settings
changes requested meanwhile and hands them to the node's handler; an exception there is
counted and logged, never ends the thread. :func:`create_services`: ``~/reset``, ``~/pause``
and ``~/resume`` (std_srvs/Trigger) over the queue.
"""

import threading
import time
import traceback
from typing import Callable, Dict, Optional

from std_srvs.srv import Trigger

from trianflow_ros.ros.node_stats import FrameStats
from trianflow_ros.ros.pairing import stamp_to_ns


class FrameQueue:
    """One-slot buffer, worker thread, pause and reset (see the module docstring)."""

    def __init__(self, stats: FrameStats, warn: Callable[..., None],
                 handler: Callable[[tuple, bool, Dict[str, object]], None]):
        """
        Create the buffer (the worker starts with :meth:`start`).

        :param stats: the frame accounting (updated under :attr:`lock`).
        :param warn: ``warn(key, text, level=...)``: a throttled log message.
        :param handler: ``handler((image, source, arrival), reset, settings)`` on the worker.
        """
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.stats, self._warn, self._handler = stats, warn, handler
        self.slot: Optional[tuple] = None
        self.busy = False
        self.paused = False
        self.pending_cfg: Dict[str, object] = {}
        self._stop = False
        self._reset_requested = False
        self._last_stamp: Optional[int] = None
        self._stride_counter = 0
        self._worker = threading.Thread(target=self._work, name='vo_worker', daemon=True)

    def start(self) -> None:
        """Start the worker thread."""
        self._worker.start()

    def submit(self, image, source, frame_skip: int, max_frame_interval: float) -> None:
        """Store a frame in the one-slot buffer (stamp, stride and pause checks first)."""
        stamp = stamp_to_ns(image.header.stamp)
        with self.cond:
            if self.paused:
                self.stats.skipped['paused'] += 1
                return
            last = self._last_stamp
            if last is not None and stamp <= last:
                self.stats.rejected['stamp'] += 1
            else:
                self._last_stamp = stamp
        if last is not None and stamp <= last:
            kind = 'duplicate' if stamp == last else 'out-of-order'
            self._warn(f'stamp_{kind}', f'{kind} image stamp {stamp / 1e9:.3f} s (last '
                       f'{last / 1e9:.3f} s): frame dropped. Stamps must increase; after a '
                       'time jump (bag loop) call ~/reset')
            return
        if last is not None and (stamp - last) * 1e-9 > max_frame_interval:
            self._warn('time_jump', f'image stamp jumped forward by {(stamp - last) * 1e-9:.1f} '
                       f's (from {last / 1e9:.3f} to {stamp / 1e9:.3f} s, more than '
                       f'max_frame_interval={max_frame_interval} s): the '
                       "frame's twist is reported unknown. If the clock jumped (bag loop, "
                       'simulation restart), call ~/reset')
        with self.cond:
            self._stride_counter += 1
            if (self._stride_counter - 1) % frame_skip:
                self.stats.skipped['stride'] += 1
                return
            if self.slot is not None:
                self.stats.skipped['busy'] += 1
            self.slot = (image, source, time.monotonic())
            self.cond.notify()

    def request_reset(self) -> None:
        """Reset the odometry before the next frame; forget the last stamp."""
        with self.cond:
            self._reset_requested = True
            self._last_stamp = None

    def set_paused(self, paused: bool) -> bool:
        """Set the pause flag; return whether it changed."""
        with self.cond:
            was, self.paused = self.paused, paused
        return was != paused

    def pending(self) -> int:
        """Return the frames held (waiting in the slot or being processed); hold :attr:`lock`."""
        return int(self.slot is not None) + int(self.busy)

    def _work(self) -> None:
        while True:
            with self.cond:
                while self.slot is None and not self._stop:
                    self.cond.wait(0.5)
                if self._stop:
                    return
                item, self.slot = self.slot, None
                self.busy = True
                reset, self._reset_requested = self._reset_requested, False
                pending, self.pending_cfg = self.pending_cfg, {}
            try:
                self._handler(item, reset, pending)
            except Exception as e:  # keep running whatever one frame does
                with self.lock:
                    self.stats.rejected['error'] += 1
                self._warn('error', f'frame failed: {type(e).__name__}: {e}\n'
                           f'{traceback.format_exc(limit=4)}', level='error')
            finally:
                with self.lock:
                    self.busy = False

    def shutdown(self) -> bool:
        """Stop the worker thread; return True when it has ended (False: still in a frame)."""
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        self._worker.join(timeout=5.0)
        return not self._worker.is_alive()


def create_services(node, queue: FrameQueue, group) -> None:
    """Create the node's ``~/reset``, ``~/pause`` and ``~/resume`` services over a queue."""
    def answer(response, message: str):
        response.success, response.message = True, message
        return response

    def reset(request, response):
        queue.request_reset()
        node.get_logger().info('odometry reset: the next frame is the new origin')
        return answer(response, 'odometry reset: the next frame is the new origin')

    def pause(request, response):
        return answer(response, 'paused: frames are counted, not used'
                      if queue.set_paused(True) else 'already paused')

    def resume(request, response):
        return answer(response, 'resumed' if queue.set_paused(False) else 'was not paused')

    for name, callback in (('reset', reset), ('pause', pause), ('resume', resume)):
        node.create_service(Trigger, f'~/{name}', callback, callback_group=group)
