"""What an auditor asks of the history: a job's trail, its state at a moment, and proof.

``verify_store`` answers "is the history intact, and does everything derived from it agree":
it recomputes the hash chain (``core.audit_chain``), checks that every stream's versions run
1, 2, 3 without a hole, folds every stream through the aggregates (so an event the domain
cannot apply shows up), and compares the live read models with a fresh projection built in
memory up to the same position, without touching the live ones. It is a single pass over
the store; the events per second it reports is the replay speed auditors can count on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import msgspec

from swift_trainer.core import aggregates
from swift_trainer.core import events as e
from swift_trainer.core import webhook_events as w
from swift_trainer.core.access import decode_access_event, is_access_stream
from swift_trainer.core.audit_chain import ChainAnchor, ChainProblem, ChainRow, ChainVerifier
from swift_trainer.core.errors import SwiftTrainerError
from swift_trainer.core.ids import job_stream
from swift_trainer.core.job import JobState
from swift_trainer.core.sqlaudit import chain_rows, migrated_through
from swift_trainer.core.sqlstore import SqlEventStore
from swift_trainer.core.store import EventMetadata, RecordedEvent
from swift_trainer.core.sweep import decode_sweep_event, is_sweep_stream

from .read_models.interface import ReadModel
from .read_models.memory import MemoryReadModel
from .read_models.replay import catch_up


class StreamProblem(msgspec.Struct, frozen=True):
    """A stream that does not fold: a version hole, or an event the aggregate refuses."""

    stream_id: str
    position: int
    message: str


class AuditReport(msgspec.Struct, frozen=True):
    """The outcome of ``audit verify``; ``ok`` is what the exit code says."""

    ok: bool
    events: int
    streams: int
    seconds: float
    events_per_second: float
    head: ChainAnchor
    chain_problems: list[ChainProblem]
    stream_problems: list[StreamProblem]
    #: ``equal``, ``different``, or ``not checked`` (no shared read models configured).
    read_models: str
    read_model_differences: list[str]


_FoldState = aggregates.State | w.WebhookState


class _StreamFolder:
    """Folds every stream as the rows go by, keeping one state per stream."""

    def __init__(self) -> None:
        self.states: dict[str, tuple[int, _FoldState | None]] = {}
        self.problems: list[StreamProblem] = []

    def fold(self, rows: Iterable[ChainRow]) -> None:
        for row in rows:
            version, state = self.states.get(row.stream_id, (0, None))
            if row.version != version + 1:
                self.problems.append(
                    StreamProblem(
                        row.stream_id,
                        row.position,
                        f"stream {row.stream_id} jumps from version {version} to "
                        f"{row.version} at position {row.position}",
                    )
                )
            if state is None and version:
                self.states[row.stream_id] = (row.version, None)  # broken before: skip
                continue
            try:
                self.states[row.stream_id] = (row.version, _fold_one(row, state))
            except (SwiftTrainerError, AssertionError, ValueError, TypeError) as exc:
                self.problems.append(
                    StreamProblem(
                        row.stream_id,
                        row.position,
                        f"stream {row.stream_id} does not fold at position {row.position} "
                        f"({row.type}): {exc or type(exc).__name__}",
                    )
                )
                self.states[row.stream_id] = (row.version, None)


def _fold_one(row: ChainRow, state: _FoldState | None) -> _FoldState:
    """One more event on a stream's state: webhooks have their own aggregate."""
    if w.is_webhook_stream(row.stream_id):
        webhook = w.decode_webhook_event(row.type, row.payload)
        if state is None:
            state = w.WebhookState(webhook_id=row.stream_id.removeprefix(w.STREAM_PREFIX))
        assert isinstance(state, w.WebhookState)
        return w.evolve_webhook(state, webhook)
    event: aggregates.AnyStoredEvent = (
        decode_access_event(row.type, row.payload)
        if is_access_stream(row.stream_id)
        else decode_sweep_event(row.type, row.payload)
        if is_sweep_stream(row.stream_id)
        else e.decode_event(row.type, row.payload, row.schema_version)
    )
    current = aggregates.initial(row.stream_id) if state is None else state
    assert not isinstance(current, w.WebhookState)
    return aggregates.apply(current, event)


async def verify_store(store: SqlEventStore, read_model: ReadModel | None = None) -> AuditReport:
    """Chain, gaps, folds and read models, in one pass; see the module docstring."""
    started = time.perf_counter()
    verifier = ChainVerifier(strict_from=await migrated_through(store))
    folder = _StreamFolder()
    async for batch in chain_rows(store):
        verifier.check(batch)
        folder.fold(batch)
    seconds = time.perf_counter() - started
    differences: list[str] = []
    status = "not checked"
    if read_model is not None:
        differences = await compare_read_model(store, read_model)
        status = "different" if differences else "equal"
    return AuditReport(
        ok=not (verifier.problems or folder.problems or differences),
        events=verifier.checked,
        streams=len(folder.states),
        seconds=round(seconds, 3),
        events_per_second=round(verifier.checked / seconds, 1) if seconds > 0 else 0.0,
        head=verifier.head,
        chain_problems=verifier.problems,
        stream_problems=folder.problems,
        read_models=status,
        read_model_differences=differences,
    )


async def compare_read_model(store: SqlEventStore, live: ReadModel, attempts: int = 3) -> list[str]:
    """Differences between ``live`` and a projection replayed in memory to the same position.

    A projector may move the live model while it is read; a snapshot whose position changed
    underneath is taken again (up to ``attempts`` times) before differences count.
    """
    differences: list[str] = []
    for _ in range(attempts):
        position = await live.applied_position()
        snapshot = await live.snapshot()
        if await live.applied_position() != position:
            continue
        fresh = MemoryReadModel()
        await catch_up(_Bounded(store, position), fresh)
        differences = _differences(snapshot, await fresh.snapshot())
        if not differences:
            return []
    return differences


class _Bounded:
    """The store's log cut at a position: what the live model had seen."""

    def __init__(self, store: SqlEventStore, until: int) -> None:
        self._store, self._until = store, until

    async def read_all(self, *, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        batch = await self._store.read_all(after_position=after_position, limit=limit)
        return [event for event in batch if event.position <= self._until]


def _differences(live: Any, fresh: Any) -> list[str]:
    """Names of the parts that differ, per job where the part is per job."""
    found: list[str] = []
    for field in live.__struct_fields__:
        mine, theirs = getattr(live, field), getattr(fresh, field)
        if mine == theirs:
            continue
        if isinstance(mine, dict) and isinstance(theirs, dict):
            found.extend(
                f"{field}[{key}]"
                for key in sorted(set(mine) | set(theirs))
                if mine.get(key) != theirs.get(key)
            )
        else:
            found.append(field)
    return found


# --- a job's trail -------------------------------------------------------------------------


class AuditEntry(msgspec.Struct, frozen=True):
    """One line of ``audit show``: who did what, when, under which command and trace."""

    position: int
    version: int
    time: datetime
    event: str
    actor: str | None
    command_id: str | None
    trace_id: str | None
    summary: str


def trace_id(metadata: EventMetadata) -> str | None:
    """The trace id out of a W3C ``traceparent`` (``00-<trace>-<span>-<flags>``)."""
    parent = metadata.trace.get("traceparent", "")
    parts = parent.split("-")
    return parts[1] if len(parts) == 4 else None


def summarize(event: e.AnyEvent) -> str:
    """The event's own fields, minus what every line already shows, as ``key=value``."""
    data = msgspec.to_builtins(event)
    for key in ("type", "at", "job_id"):
        data.pop(key, None)
    if isinstance(event, e.JobSubmitted):
        spec = data.pop("spec", {})
        data = {
            k: spec[k] for k in ("model_path", "data_path", "priority", "gpu_count") if k in spec
        } | data
    return " ".join(f"{k}={_short(v)}" for k, v in data.items())


def _short(value: object) -> str:
    text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    return text if len(text) <= 60 else text[:57] + "..."


async def job_history(store: SqlEventStore, job_id: str) -> list[AuditEntry]:
    """Every event of the job's stream, oldest first; unknown job: an empty list."""
    entries = []
    for recorded in await store.read_stream(job_stream(job_id)):
        try:
            summary = summarize(
                e.decode_event(recorded.type, recorded.payload, recorded.schema_version)
            )
        except SwiftTrainerError as exc:
            summary = f"(does not decode: {exc})"
        entries.append(
            AuditEntry(
                position=recorded.position,
                version=recorded.version,
                time=recorded.recorded_at,
                event=recorded.type,
                actor=recorded.metadata.actor,
                command_id=recorded.metadata.command_id,
                trace_id=trace_id(recorded.metadata),
                summary=summary,
            )
        )
    return entries


async def job_state_as_of(
    store: SqlEventStore, job_id: str, *, position: int | None = None, at: datetime | None = None
) -> tuple[JobState, int]:
    """The job folded from its events up to a global position or a time (inclusive).

    Returns the state and the position of the last event folded (0: none yet).
    """
    chosen = [
        r
        for r in await store.read_stream(job_stream(job_id))
        if (position is None or r.position <= position) and (at is None or r.recorded_at <= at)
    ]
    state = aggregates.fold(job_stream(job_id), chosen)
    assert isinstance(state, JobState)
    return state, chosen[-1].position if chosen else 0
