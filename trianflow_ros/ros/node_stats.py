"""
The node's frame accounting and timing, as the key/values of its diagnostics.

Every image is accounted for: ``received = processed + skipped_* + rejected_* + pending``.
Skipped frames were dropped *by design* (``busy``: the newest-frame worker replaced a frame
that waited while it was busy; ``stride``: frame_skip; ``paused``), rejected ones because of
a problem (the reason is the key).

Latency (``latency_ms``) is the node's clock minus the image stamp: meaningful only when the
stamps come from the same clock (a live camera; a bag replayed with ``--clock`` and
``use_sim_time:=true``). When the two differ by more than :data:`PLAUSIBLE_LATENCY_S`
(stamps of another clock: simulation time, an old bag) it is not reported (``n/a``, with the
offset in ``stamp_clock_offset_s``) instead of a number such as 1.8e12 ms; ``in_node_ms``
(arrival to publication, the node's own clock) is always reported.
"""

import time
from typing import Dict, Optional

#: Reasons a frame is rejected (keys of the diagnostics' rejected_* values).
REJECT_REASONS = ('encoding', 'malformed', 'size', 'stamp', 'camera_info', 'no_camera_info',
                  'error')
#: Reasons a frame is skipped by design.
SKIP_REASONS = ('busy', 'stride', 'paused')
#: Larger |node clock - stamp| (s) means the stamps are of another clock.
PLAUSIBLE_LATENCY_S = 60.0


class FrameStats:
    """Counters and timings; the caller holds the node's lock around every call."""

    def __init__(self, clock=time.monotonic):
        """Start counting now."""
        self.clock = clock
        self.received = 0
        self.processed = 0
        self.lost = 0
        self.time_jumps = 0
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)
        self.latency_ms: Optional[float] = None
        self.latency_sum_ms = 0.0
        self.latency_count = 0
        self.latency_max_ms = 0.0
        self.clock_offset_s: Optional[float] = None
        self.processing_ms = 0.0
        self.node_ms = 0.0
        self.node_sum_ms = 0.0
        self.start = clock()

    def frame_done(self, latency_ms: float, processing_ms: float, node_ms: float,
                   lost: bool) -> bool:
        """
        Count a processed frame; return False when its latency is not plausible.

        :param latency_ms: node clock minus image stamp.
        :param processing_ms: time in the odometry.
        :param node_ms: arrival to publication.
        :param lost: the frame was LOST.
        """
        self.processed += 1
        self.lost += int(lost)
        self.processing_ms = processing_ms
        self.node_ms = node_ms
        self.node_sum_ms += node_ms
        plausible = abs(latency_ms) <= PLAUSIBLE_LATENCY_S * 1000.0
        if plausible:
            self.latency_ms = latency_ms
            self.latency_sum_ms += latency_ms
            self.latency_count += 1
            self.latency_max_ms = max(self.latency_max_ms, latency_ms)
            self.clock_offset_s = None
        else:
            self.latency_ms = None
            self.clock_offset_s = latency_ms / 1000.0
        return plausible

    def values(self, pending: int) -> Dict[str, object]:
        """Return the accounting and timing values of the diagnostics."""
        out: Dict[str, object] = {'received': self.received, 'processed': self.processed,
                                  'pending': pending}
        out.update({f'skipped_{k}': v for k, v in self.skipped.items()})
        out.update({f'rejected_{k}': v for k, v in self.rejected.items()})
        out['rejected'] = sum(self.rejected.values())
        out['skipped'] = sum(self.skipped.values())
        out['lost'] = self.lost
        out['time_jumps'] = self.time_jumps
        if self.latency_ms is None:
            out['latency_ms'] = 'n/a'
        else:
            out['latency_ms'] = f'{self.latency_ms:.1f}'
        if self.clock_offset_s is not None:
            out['stamp_clock_offset_s'] = f'{self.clock_offset_s:.3f}'
        out['latency_mean_ms'] = (f'{self.latency_sum_ms / self.latency_count:.1f}'
                                  if self.latency_count else 'n/a')
        out['latency_max_ms'] = f'{self.latency_max_ms:.1f}' if self.latency_count else 'n/a'
        out['processing_ms'] = f'{self.processing_ms:.1f}'
        out['in_node_ms'] = f'{self.node_ms:.1f}'
        out['in_node_mean_ms'] = (f'{self.node_sum_ms / self.processed:.1f}'
                                  if self.processed else '0.0')
        elapsed = max(self.clock() - self.start, 1e-9)
        out['processed_per_s'] = f'{self.processed / elapsed:.2f}'
        return out
