"""Catching a read model up from the store: the garbage collector pauses only for long ones."""

from __future__ import annotations

import gc

from swift_trainer.core.store import RecordedEvent
from swift_trainer.projections.read_models import MemoryReadModel, catch_up

from .history import random_history


class _Log:
    """The store's ``read_all``, noting whether the collector ran at each read."""

    def __init__(self, records: list[RecordedEvent]) -> None:
        self.records = records
        self.collector_on: list[bool] = []

    async def read_all(self, *, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        self.collector_on.append(gc.isenabled())
        return [r for r in self.records if r.position > after_position][:limit]


async def test_a_short_catch_up_leaves_the_collector_alone() -> None:
    records = random_history(3, jobs=3, steps=20).records
    log = _Log(records)
    model = MemoryReadModel()
    assert await catch_up(log, model, batch_size=len(records) + 1) == len(records)
    assert all(log.collector_on) and gc.isenabled()


async def test_a_long_catch_up_pauses_the_collector_and_restores_it() -> None:
    records = random_history(3, jobs=3, steps=60).records
    log = _Log(records)
    model = MemoryReadModel()
    assert await catch_up(log, model, batch_size=10) == len(records)
    assert log.collector_on[0] and not any(log.collector_on[1:])
    assert gc.isenabled()
