"""Invariants checked over the stored event log, after the fact.

The domain and the store enforce these as they go; this module re-checks them from the
log alone, so that a chaos run, a test or an auditor can prove them held rather than trust
the code that was meant to keep them. Every check is pure: events in, violations out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import msgspec

from . import events as e
from .access import is_access_stream
from .job import ACTIVE, JobState, evolve, initial_state
from .store import RecordedEvent
from .sweep import is_sweep_stream


class Violation(msgspec.Struct, frozen=True):
    rule: str
    position: int
    message: str


def gpu_double_bookings(log: Iterable[RecordedEvent]) -> tuple[list[Violation], int]:
    """Replay the log and check, after every event, that live jobs hold disjoint GPUs.

    Returns the violations and how many placements (``JobScheduled``) were checked, so a
    caller can tell the check saw something.
    """
    states: dict[str, JobState] = {}
    holder: dict[tuple[str, int], str] = {}
    violations: list[Violation] = []
    scheduled = 0
    for recorded in log:
        if is_access_stream(recorded.stream_id) or is_sweep_stream(recorded.stream_id):
            continue
        event = e.decode_event(recorded.type, recorded.payload, recorded.schema_version)
        if not isinstance(event, e.JobEvent):
            continue
        job_id = event.job_id
        old = states.get(job_id) or initial_state(job_id)
        new = evolve(old, event)
        states[job_id] = new
        if old.status in ACTIVE and old.runner_id is not None:
            for gpu in old.gpu_ids:
                if holder.get((old.runner_id, gpu)) == job_id:
                    del holder[(old.runner_id, gpu)]
        if new.status in ACTIVE and new.runner_id is not None:
            for gpu in new.gpu_ids:
                other = holder.get((new.runner_id, gpu))
                if other is not None and other != job_id:
                    violations.append(
                        Violation(
                            "gpu_double_booked",
                            recorded.position,
                            f"GPU {gpu} of {new.runner_id} held by {other} and {job_id}",
                        )
                    )
                holder[(new.runner_id, gpu)] = job_id
        scheduled += isinstance(event, e.JobScheduled)
    return violations, scheduled


def _fact(recorded: RecordedEvent) -> tuple[str, bytes]:
    """An event's type and content without its time: what a second decision repeats."""
    try:
        data = msgspec.json.decode(recorded.payload)
    except msgspec.DecodeError:
        return recorded.type, bytes(recorded.payload)
    if isinstance(data, dict):
        data.pop("at", None)
    return recorded.type, msgspec.json.encode(data, order="sorted")


def repeated_appends(log: Iterable[RecordedEvent]) -> list[Violation]:
    """Events stored twice: a reused event id, or one command id whose events are not a
    single append (several streams, a gap in versions, or the same fact twice), as a
    redelivered command that was decided again would leave. One append may hold several
    events of one type with different content (two checkpoints removed at once)."""
    violations: list[Violation] = []
    seen_ids: set[str] = set()
    by_command: dict[str, list[RecordedEvent]] = defaultdict(list)
    for recorded in log:
        if recorded.event_id in seen_ids:
            violations.append(
                Violation("event_repeated", recorded.position, f"event id {recorded.event_id}")
            )
        seen_ids.add(recorded.event_id)
        if recorded.metadata.command_id:
            by_command[recorded.metadata.command_id].append(recorded)
    for command_id, group in by_command.items():
        streams = {x.stream_id for x in group}
        versions = [x.version for x in group]
        types = [x.type for x in group]
        single = (
            len(streams) == 1
            and versions == list(range(versions[0], versions[0] + len(versions)))
            and len({_fact(x) for x in group}) == len(group)
        )
        if not single:
            violations.append(
                Violation(
                    "command_appended_twice",
                    group[-1].position,
                    f"command {command_id} stored {types} in {sorted(streams)} at versions "
                    f"{versions}",
                )
            )
    return violations
