"""Pausing the cyclic garbage collector while a replay allocates millions of objects.

A replay makes a handful of objects per event that reference counting frees (they form no
cycles), yet each time the collector's thresholds trip it rescans every object still alive:
the batch in flight and the fold cache. On a rebuild that was about 40% of the time.
Paused, memory stays bounded by the batch; one full collection at the end catches any cycle
that was made meanwhile.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


class _Pauses:
    """How many pauses are open, and whether the collector ran before the first."""

    depth = 0
    was_enabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """Nestable: the collector comes back (if it was on) when the outermost pause ends."""
    if _Pauses.depth == 0:
        _Pauses.was_enabled = gc.isenabled()
        gc.disable()
    _Pauses.depth += 1
    try:
        yield
    finally:
        _Pauses.depth -= 1
        if _Pauses.depth == 0:
            gc.collect()
            if _Pauses.was_enabled:
                gc.enable()
