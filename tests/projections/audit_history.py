"""A real job history stored in a real event store, with the job's state after each event.

The states come from ``History`` (the domain's own decide/evolve as it ran), not from the
audit code under test, so ``--as-of`` is checked against what the job really was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.projections.read_models.history import History

from swift_trainer.core.job import JobState
from swift_trainer.core.sqlstore import SqlEventStore
from swift_trainer.core.store import EventMetadata, NewEvent, RecordedEvent

TRACE_ID = "ab" * 16


@dataclass
class StoredHistory:
    events: list[RecordedEvent] = field(default_factory=list)
    #: (global position, the job's state right after it) for job "train-1", one per command.
    states: list[tuple[int, JobState]] = field(default_factory=list)


async def store_history(store: SqlEventStore) -> StoredHistory:
    """Two jobs: one trains and succeeds, one is submitted, reprioritised and stopped."""
    history = History()
    steps = [
        lambda: history.submit("train-1", priority=7),
        lambda: history.submit("train-2"),
        lambda: history.schedule("train-1"),
        lambda: history.started("train-1"),
        lambda: history.progress("train-1", 10, loss=2.5),
        lambda: history.reprioritise("train-2", 9),
        lambda: history.progress("train-1", 100, loss=0.75),
        lambda: history.succeed("train-1"),
        lambda: history.stop("train-2"),
    ]
    out = StoredHistory()
    for step in steps:
        last_of_train_1 = 0
        for recorded in step():
            metadata = EventMetadata(
                command_id=f"cmd-{recorded.position}",
                actor="key-alice" if recorded.position % 2 else "scheduler",
                trace={"traceparent": f"00-{TRACE_ID}-{'cd' * 8}-01"},
            )
            new = NewEvent(recorded.event_id, recorded.type, recorded.payload, metadata=metadata)
            result = await store.append(
                recorded.stream_id, [new], expected_version=recorded.version - 1
            )
            out.events.extend(result.events)
            if recorded.stream_id == "job-train-1":
                last_of_train_1 = result.events[-1].position
        if last_of_train_1:  # the state after the whole command, as History keeps it
            out.states.append((last_of_train_1, history.state("train-1")))
    return out
