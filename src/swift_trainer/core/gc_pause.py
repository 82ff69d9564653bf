"""The cyclic garbage collector: paused while a replay allocates millions of objects, and
settled once a serving process has started (``settle_heap``).

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


#: Allocations (less deallocations) between two young collections in a serving process. The
#: interpreter's default, 700, runs a collection every few requests, and each one rescans
#: the objects of every request in flight; most of a request's objects are freed by
#: reference counting long before 20,000 pile up.
SERVING_YOUNG_THRESHOLD = 20_000


def settle_heap() -> None:
    """Once a long-running process has started: freeze what start-up built, collect less often.

    Start-up leaves a large heap of modules, schemas and caches that lives as long as the
    process. Frozen (``gc.freeze``), the collector never rescans it: before, each full
    collection under load walked it all, about a tenth of a create's CPU in ``up``. A higher
    young threshold makes the young and middle collections rarer; a cycle made later is
    still collected, only a little later.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(SERVING_YOUNG_THRESHOLD, middle, old)
