"""Log lines that a client can trigger at will (one per request), rate limited per key, e.g. per session.

The first line of a key is written at once; further lines of that key within ``interval_s`` are counted
instead, and the next line written for it says how many were left out. Keys are bounded (least recently used
first out), so a stream of new sessions cannot grow it either.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval_s: float = 5.0, *, max_keys: int = 1024,
                 clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._clock = clock
        # key -> [time of the last line written, lines suppressed since]
        self._keys: collections.OrderedDict[str, list] = collections.OrderedDict()

    def log(self, key: str, level: int, msg: str, *args: object) -> bool:
        """Write the line unless ``key`` had one less than ``interval_s`` ago; True when written."""
        now = self._clock()
        state = self._keys.get(key)
        if state is not None:
            self._keys.move_to_end(key)
            if now - state[0] < self.interval_s:
                state[1] += 1
                return False
            if state[1]:
                msg += " (%d more like this in the last %.0fs not logged)"
                args = (*args, state[1], now - state[0])
        self._keys[key] = [now, 0]
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        self.logger.log(level, msg, *args)
        return True
