"""
Log throttling that never hides a different problem.

A warning is throttled per *kind* (a key such as 'malformed') **and per message shape**: the
text with its numbers replaced (stamps, sizes and counts change from frame to frame, the
problem does not). Two different errors of one kind are both logged; the same error repeated
is logged once per period, and the next time it is logged it says how many were suppressed.

rclpy's own ``throttle_duration_sec`` / ``once`` cannot do this: they key by the *call site*
(one throttle for every message logged from one line), so a different error of the same kind
from the same line would be hidden, and they do not count what they suppressed.
"""

import re
import threading
import time
from typing import Callable, Dict, Optional, Tuple

#: Numbers (ints, decimals, exponents) are not part of a message's shape.
_NUMBER = re.compile(r'[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?')


def message_shape(text: str) -> str:
    """Return the text with every number replaced by '#' (the shape of the message)."""
    return _NUMBER.sub('#', text)


class LogThrottle:
    """Decide which messages to log (see the module docstring)."""

    def __init__(self, period: float = 5.0, clock: Callable[[], float] = time.monotonic):
        """
        Create the throttle.

        :param period: seconds between two logs of one message shape of one kind.
        :param clock: monotonic seconds.
        """
        self.period = float(period)
        self.clock = clock
        self._last: Dict[Tuple[str, str], float] = {}
        self._suppressed: Dict[Tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def admit(self, key: str, text: str, period: Optional[float] = None,
              once: bool = False) -> Optional[str]:
        """
        Return the text to log now (with a count of suppressed repeats), or None.

        :param key: the kind of message.
        :param text: the message.
        :param period: seconds between repeats (default: the throttle's).
        :param once: log this shape of this kind only once.
        """
        slot = (key, message_shape(text))
        now = self.clock()
        wait = self.period if period is None else float(period)
        with self._lock:
            last = self._last.get(slot)
            if last is not None and (once or now - last < wait):
                self._suppressed[slot] = self._suppressed.get(slot, 0) + 1
                return None
            self._last[slot] = now
            skipped = self._suppressed.pop(slot, 0)
        if skipped:
            text += f' ({skipped} more like this since the last report)'
        return text


class ThrottledLog:
    """A logger's ``log(key, text, ...)`` through a :class:`LogThrottle`."""

    def __init__(self, logger, period: float = 5.0):
        """
        Wrap a logger (``info``, ``warning``, ``error``).

        :param logger: e.g. an rclpy node's logger.
        :param period: seconds between two logs of one message shape of one kind.
        """
        self.logger = logger
        self.throttle = LogThrottle(period)

    def __call__(self, key: str, text: str, period: Optional[float] = None, once: bool = False,
                 level: str = 'warning') -> None:
        """Log a message, throttled per kind and message shape (see :meth:`LogThrottle.admit`)."""
        text = self.throttle.admit(key, text, period, once)
        if text is None:
            return
        # one call site per severity: rclpy refuses a call site that changes its severity
        if level == 'info':
            self.logger.info(text)
        elif level == 'error':
            self.logger.error(text)
        else:
            self.logger.warning(text)
