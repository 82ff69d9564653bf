"""The usage fold kept caught up with a real SQL store: in batches, then incrementally."""

from __future__ import annotations

from datetime import timedelta

from tests.projections.read_models.history import T0, History

from swift_trainer.core.events import decode_event
from swift_trainer.core.sqlstore import SqlEventStore
from swift_trainer.core.store import NewEvent
from swift_trainer.core.usage import UsageLedger, usage_report
from swift_trainer.projections.usage_view import UsageView


async def stored(store: SqlEventStore, history: History, done: int = 0) -> int:
    for recorded in history.records[done:]:
        new = NewEvent(recorded.event_id, recorded.type, recorded.payload)
        await store.append(recorded.stream_id, [new], expected_version=None)
    return len(history.records)


async def test_the_view_equals_a_fold_of_the_whole_log(store: SqlEventStore) -> None:
    history = History()
    for job_id, owner in (("a", "alice"), ("b", "bob"), ("c", None)):
        history.submit(job_id, owner=owner, gpu_count=1)
        history.schedule(job_id)
        history.started(job_id)
        history.checkpoint(job_id, 10)
    history.succeed("a")
    history.fail("b")
    done = await stored(store, history)
    view = UsageView(store, batch=2)  # many small reads
    first = await view.ledger()
    assert view.position == await store.last_position()

    history.succeed("c")
    await stored(store, history, done)
    ledger = await view.ledger()  # only what came since
    assert ledger is first

    replayed = UsageLedger()
    for record in await store.read_all(limit=10_000):
        replayed.apply(decode_event(record.type, record.payload, record.schema_version))
    window = {"start": T0, "end": T0 + timedelta(days=1)}
    for group_by in ("owner", "day"):
        assert usage_report(ledger, group_by=group_by, **window) == usage_report(
            replayed, group_by=group_by, **window
        )
    rows = {r.group: r for r in usage_report(ledger, group_by="owner", **window)}
    assert set(rows) == {"alice", "bob", "local"}
    assert rows["alice"].jobs == {"succeeded": 1} and rows["bob"].jobs == {"failed": 1}
