"""Prometheus instruments of the bus layer: commands, appended events, the relay's lag.

The instruments live here, apart from the handler and relay, so that counting stays one
import away from the code it watches (and other changes to those modules merge cleanly).
Names follow Prometheus conventions under the ``swift_trainer_`` prefix; ``prometheus-client``
writes the exposition format.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from prometheus_client import Counter, Gauge, Histogram

from ..core.store import EventStore
from .messages import CommandReply
from .relay import OutboxRelay

_log = logging.getLogger(__name__)

COMMAND_SECONDS: Final = Histogram(
    "swift_trainer_command_duration_seconds",
    "Time the command handler took to decide and record a command, by type and outcome "
    "(ok, duplicate, refused).",
    ["command", "outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
EVENTS_APPENDED: Final = Counter(
    "swift_trainer_events_appended",
    "Events appended to the event store by this process, by event type.",
    ["type"],
)
COMMAND_REFUSALS: Final = Counter(
    "swift_trainer_command_refusals",
    "Commands refused (nothing recorded), by error code.",
    ["code"],
)
RELAY_LAG: Final = Gauge(
    "swift_trainer_relay_lag_events",
    "Stored events this process's outbox relay has still to publish to JetStream.",
)


def outcome_of(reply: CommandReply) -> str:
    if reply.error is not None:
        return "refused"
    return "duplicate" if reply.duplicate else "ok"


def observe_command(command: str, reply: CommandReply, seconds: float) -> None:
    """The handler's observer: one command's latency, refusal code and appended events."""
    COMMAND_SECONDS.labels(command=command, outcome=outcome_of(reply)).observe(seconds)
    if reply.error is not None:
        COMMAND_REFUSALS.labels(code=reply.error.code).inc()
    elif not reply.duplicate:
        for event in reply.events:
            EVENTS_APPENDED.labels(type=event.type).inc()


async def sample_relay_lag(store: EventStore, relay: OutboxRelay, interval_s: float) -> None:
    """Keep ``RELAY_LAG`` at the store's head minus what the relay has published."""
    while True:
        try:
            RELAY_LAG.set(max(await store.last_position() - relay.position, 0))
        except Exception as exc:  # a sampler never takes its process down
            _log.debug("cannot sample the relay lag: %r", exc)
        await asyncio.sleep(interval_s)
