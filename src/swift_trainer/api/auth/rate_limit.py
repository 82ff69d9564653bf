"""A token bucket per API key for writes: a runaway script cannot flood the command bus.

In memory, per API process: with N replicas behind a balancer a key gets up to N times
the rate, which still bounds it; an exact global limit would cost a Redis round trip on
every write.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class WriteRateLimit:
    """``rate`` writes per second on average, bursts of ``burst``; 0 disables it."""

    rate: float = 5.0
    burst: int = 20
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, key: str) -> float:
        """0 when the write may go ahead, else the seconds to wait (``Retry-After``)."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, then = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


def retry_after_header(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))
