"""
Image / camera_info pairing (trianflow_ros.ros.pairing), without ROS.

Every rule on its own, then thousands of frames in random arrival orders, with lost and late
infos.
"""

import random
import types

import pytest
from trianflow_ros.ros.pairing import (FramePairer, INFO_CACHE_SIZE, InfoCache,
                                       MessageFiltersInfoCache, stamp_to_ns)

SEC = 1_000_000_000


def msg(stamp_ns: int, name: str = ''):
    """Return a stand-in message with header.stamp (sec, nanosec)."""
    stamp = types.SimpleNamespace(sec=stamp_ns // SEC, nanosec=stamp_ns % SEC)
    return types.SimpleNamespace(header=types.SimpleNamespace(stamp=stamp), name=name)


class Clock:

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Run:
    """A pairer with recording callbacks and a hand-driven clock."""

    def __init__(self, wait=0.1, max_age=1.0, matrix=False, infos=None, max_held=10):
        self.clock = Clock()
        self.emitted, self.dropped = [], []
        self.matrix = matrix
        self.pairer = FramePairer(
            lambda im, info, src: self.emitted.append((stamp_to_ns(im.header.stamp),
                                                       None if info is None else
                                                       stamp_to_ns(info.header.stamp), src)),
            lambda im, text: self.dropped.append((stamp_to_ns(im.header.stamp), text)),
            wait=wait, max_age=max_age, infos=infos, max_held=max_held,
            matrix_available=lambda: self.matrix, clock=self.clock)

    def image(self, t):
        self.pairer.add_image(msg(t), t)

    def info(self, t):
        self.pairer.add_info(msg(t), t)

    def advance(self, seconds):
        self.clock.t += seconds
        self.pairer.poll()


def test_info_cache_keeps_the_newest_and_finds_by_stamp():
    cache = InfoCache(3)
    for t in (5, 1, 3, 4):
        cache.add(msg(t * SEC), t * SEC)
    assert len(cache) == 3 and cache.exact(1 * SEC) is None and cache.exact(3 * SEC)
    assert cache.newest_within(4 * SEC, SEC // 2)[0] == 4 * SEC
    assert cache.newest_within(10 * SEC, 5 * SEC)[0] == 5 * SEC
    assert cache.newest_within(10 * SEC, 4 * SEC) is None
    assert cache.newest_within(2 * SEC, SEC)[0] == 3 * SEC      # a newer info counts too
    with pytest.raises(ValueError):
        InfoCache(0)


def test_exact_pairs_whichever_arrives_first():
    r = Run()
    r.info(1 * SEC)
    r.image(1 * SEC)                      # info first: at once
    r.image(2 * SEC)                      # image first: waits ...
    assert r.pairer.pending() == 1 and len(r.emitted) == 1
    r.advance(0.05)
    r.info(2 * SEC)                       # ... and gets its own info
    assert r.emitted == [(SEC, SEC, 'exact'), (2 * SEC, 2 * SEC, 'exact')]
    assert r.pairer.pending() == 0 and not r.dropped


def test_first_image_after_camera_info_starts_is_paired():
    """No info yet and no camera_matrix: the image waits and gets the info that follows."""
    r = Run(wait=0.2)
    r.image(7 * SEC)
    r.advance(0.1)
    r.info(7 * SEC)
    assert r.emitted == [(7 * SEC, 7 * SEC, 'exact')] and not r.dropped


def test_lost_or_late_info_uses_the_latest_fresh_one():
    r = Run(wait=0.1, max_age=1.0)
    r.info(1 * SEC)
    r.image(1 * SEC)
    r.image(2 * SEC)          # its info is lost: the next info decides it ...
    r.info(3 * SEC)
    r.image(3 * SEC)
    assert r.emitted == [(SEC, SEC, 'exact'), (2 * SEC, 3 * SEC, 'latest'),
                         (3 * SEC, 3 * SEC, 'exact')]
    r.image(3 * SEC + SEC // 2)   # ... or its deadline
    r.advance(0.11)
    assert r.emitted[-1] == (3 * SEC + SEC // 2, 3 * SEC, 'latest') and not r.dropped


def test_gap_in_camera_info_drops_nothing_within_max_age_then_camera_matrix():
    r = Run(wait=0.05, max_age=2.0)
    r.info(0)
    r.image(0)
    for k in range(1, 20):            # no info for 1.9 s
        r.image(k * SEC // 10)
        r.advance(0.06)
    assert len(r.emitted) == 20 and not r.dropped
    assert all(src == 'latest' for _, _, src in r.emitted[1:])
    r.image(5 * SEC)                  # 5 s after the last info: nothing fresh, no matrix
    r.advance(0.06)
    assert len(r.dropped) == 1 and 'camera_info_max_age' in r.dropped[0][1]
    r.matrix = True                   # camera_matrix applies again (was: never after an info)
    r.image(6 * SEC)
    assert r.emitted[-1] == (6 * SEC, None, 'matrix') and r.pairer.pending() == 0
    r.info(7 * SEC)                   # the stream comes back: exact again
    r.image(7 * SEC)
    assert r.emitted[-1] == (7 * SEC, 7 * SEC, 'exact')
    assert r.pairer.counts == {'exact': 2, 'latest': 19, 'matrix': 1}


def test_without_any_camera_info_the_drop_says_so():
    r = Run(wait=0.0)
    r.image(SEC)
    assert r.dropped == [(SEC, 'no camera_info has been received')]
    r.matrix = True
    r.image(2 * SEC)                  # camera_matrix only: used at once, no waiting
    assert r.emitted == [(2 * SEC, None, 'matrix')]


def test_order_is_kept_and_overflow_decides_instead_of_dropping():
    r = Run(wait=10.0, max_age=100.0, max_held=3)
    r.info(0)
    for k in range(1, 6):
        r.image(k * SEC)              # infos of 1..5 never come
    assert [e[0] for e in r.emitted] == [SEC, 2 * SEC]
    assert r.pairer.pending() == 3
    r.info(4 * SEC)                   # decides 3 (latest) and 4 (exact), keeps 5
    r.pairer.flush()
    assert [e[0] for e in r.emitted] == [k * SEC for k in range(1, 6)]
    assert [e[2] for e in r.emitted] == ['latest', 'latest', 'latest', 'exact', 'latest']
    assert not r.dropped


@pytest.mark.parametrize('seed', range(5))
def test_random_arrival_orders_pair_every_frame_exactly(seed):
    """2000 frames at any rate: infos up to 150 frames early or 3 frames late; none dropped."""
    rng = random.Random(seed)
    n = 2000
    events = []
    for k in range(n):
        t = k * SEC // 30
        events.append((k + rng.uniform(0, 3), 'info', t))              # up to 3 late
        events.append((k + rng.uniform(0, 150) if rng.random() < 0.3 else k + 1.5,
                       'image', t))                                     # images lag
    # each topic stays in order (DDS), the two interleave freely
    infos = sorted(e for e in events if e[1] == 'info')
    images = sorted(e for e in events if e[1] == 'image')
    merged = sorted([(e[0], i, e) for i, e in enumerate(infos)]
                    + [(e[0], i + 0.5, e) for i, e in enumerate(images)])
    # the k-th message of a topic carries the k-th stamp
    order = {'info': iter(sorted(e[2] for e in infos)),
             'image': iter(sorted(e[2] for e in images))}
    r = Run(wait=1.0, max_age=0.5, infos=InfoCache(INFO_CACHE_SIZE))
    for _, _, (_, kind, _) in merged:
        t = next(order[kind])
        r.image(t) if kind == 'image' else r.info(t)
        r.clock.t += 0.001            # 1 ms per message: no deadline passes
    r.pairer.flush()
    assert not r.dropped and len(r.emitted) == n
    assert all(a == b and src == 'exact' for a, b, src in r.emitted)
    assert [e[0] for e in r.emitted] == sorted(e[0] for e in r.emitted)


@pytest.mark.parametrize('seed', range(3))
def test_random_lost_infos_never_drop_an_image(seed):
    rng = random.Random(seed)
    r = Run(wait=0.02, max_age=1.0)
    for k in range(1000):
        t = k * SEC // 20
        if rng.random() < 0.8:
            r.info(t)
        r.image(t)
        r.advance(rng.choice([0.0, 0.01, 0.05]))
    r.pairer.flush()
    assert not r.dropped and len(r.emitted) == 1000
    exact = [e for e in r.emitted if e[2] == 'exact']
    assert all(a == b for a, b, _ in exact) and len(exact) > 700


# --------------------------------------------------------------------------------------------
class _Cache:
    """Stand-in of message_filters.Cache: the documented constructor and getInterval."""

    def __init__(self, source, cache_size=1):
        from rclpy.time import Time
        self.cache_size = cache_size
        self.cache_msgs, self.times = [], []
        self._time = Time
        source.append(self.add)

    def add(self, m):
        self.cache_msgs.append(m)
        self.times.append(self._time.from_msg(
            __import__('builtin_interfaces.msg', fromlist=['Time']).Time(
                sec=m.header.stamp.sec, nanosec=m.header.stamp.nanosec)))
        del self.cache_msgs[:-self.cache_size], self.times[:-self.cache_size]

    def getInterval(self, lo, hi):  # noqa: N802 - message_filters API
        # real rclpy Time objects: comparing clock types that differ raises, as in ROS
        return [m for m, t in zip(self.cache_msgs, self.times) if lo <= t <= hi]


def test_message_filters_cache_adapter_has_the_fallback_size_and_answers():
    pytest.importorskip('rclpy')
    inputs = []
    module = types.SimpleNamespace(Cache=_Cache)
    cache = MessageFiltersInfoCache(module, inputs, INFO_CACHE_SIZE)
    assert cache.cache.cache_size == InfoCache().capacity == INFO_CACHE_SIZE
    for k in range(1, 6):
        inputs[0](msg(k * SEC))
    assert stamp_to_ns(cache.exact(3 * SEC).header.stamp) == 3 * SEC
    assert cache.exact(3 * SEC + 1) is None
    assert cache.newest_within(3 * SEC, SEC // 2)[0] == 3 * SEC
    assert cache.newest_within(10 * SEC, 5 * SEC)[0] == 5 * SEC
    assert cache.newest_within(20 * SEC, SEC) is None and len(cache) == 5


def test_startup_images_wait_longer_for_the_first_info():
    """DDS discovery can deliver the first infos late: earlier images get the first one."""
    r = Run(wait=0.1, max_age=1.0)
    r.pairer.first_wait = 2.0
    for k in range(8):                       # 0.8 s of images, their infos lost
        r.image(k * SEC // 10)
        r.advance(0.1)
    assert not r.emitted and not r.dropped and r.pairer.pending() == 8
    r.info(8 * SEC // 10)                    # the first info to arrive
    r.image(8 * SEC // 10)
    assert len(r.emitted) == 9 and not r.dropped
    assert [e[2] for e in r.emitted] == ['latest'] * 8 + ['exact']
    r.image(9 * SEC // 10)                   # now the normal (short) wait applies
    r.advance(0.11)
    assert r.emitted[-1] == (9 * SEC // 10, 8 * SEC // 10, 'latest')
    lonely = Run(wait=0.1, max_age=1.0)
    lonely.pairer.first_wait = 2.0
    lonely.image(SEC)
    lonely.advance(1.0)
    assert not lonely.dropped
    lonely.advance(1.01)
    assert lonely.dropped == [(SEC, 'no camera_info has been received')]


def test_an_image_being_handed_on_is_still_pending():
    """
    An image being handed on counts as pending.

    Between its decision (under the pairer's lock) and the callback that hands it on, the
    node's accounting (received = processed + skipped + rejected + pending) once saw such an
    image nowhere, and a test read "handled" too early.
    """
    seen = []
    pairer = None

    def emit(image, info, source):
        seen.append(('emit', pairer.pending()))

    def drop(image, text):
        seen.append(('drop', pairer.pending()))
        raise RuntimeError('a failing callback must not leave the count behind')

    clock = Clock()
    pairer = FramePairer(emit, drop, wait=0.1, max_age=1.0, clock=clock,
                         matrix_available=lambda: False)
    pairer.add_info(msg(SEC), SEC)
    pairer.add_image(msg(SEC), SEC)                                  # exact: emitted at once
    assert seen == [('emit', 1)] and pairer.pending() == 0
    pairer.add_image(msg(5 * SEC), 5 * SEC)                          # waits for its info
    assert pairer.pending() == 1
    clock.t = 1.0
    with pytest.raises(RuntimeError):
        pairer.poll()                                                # too old: dropped
    assert seen[-1] == ('drop', 1) and pairer.pending() == 0
