"""One job's recorded events, read back for a scheduler that let the job go at rest.

From the event store when the scheduler has one (the truth), else from the JetStream
``EVENTS`` stream, which keeps every event forever (``bus.connection.events_stream_config``)
and is what the scheduler follows anyway. See ``dormant_jobs`` and ``SchedulerState.restore``.
"""

from __future__ import annotations

import logging

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from swift_trainer.bus import subjects
from swift_trainer.bus.messages import decode_event_envelope
from swift_trainer.core.errors import SwiftTrainerError
from swift_trainer.core.ids import job_stream
from swift_trainer.core.store import EventStore, RecordedEvent

_log = logging.getLogger(__name__)

_BATCH = 256


async def job_history(
    nc: Client, store: EventStore | None, job_id: str, *, timeout: float = 5.0
) -> list[RecordedEvent]:
    """Every recorded event of ``job_id`` in position order (raises when neither answers)."""
    if store is not None:
        return await store.read_stream(job_stream(job_id))
    return await _from_events_stream(nc, job_id, timeout)


async def _from_events_stream(nc: Client, job_id: str, timeout: float) -> list[RecordedEvent]:
    js = nc.jetstream()
    subscription = await js.pull_subscribe(
        subjects.job_events_filter(job_id),
        stream=subjects.EVENTS_STREAM,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=max(30.0, 2 * timeout),
        ),
    )
    found: list[RecordedEvent] = []
    try:
        while True:
            try:
                batch = await subscription.fetch(_BATCH, timeout=timeout)
            except NatsTimeoutError:
                break  # nothing (more) on the stream for this job
            for msg in batch:
                try:
                    found.append(decode_event_envelope(msg.data).to_recorded())
                except SwiftTrainerError as exc:
                    _log.warning("skipped an undecodable event of job %s: %s", job_id, exc)
            last = batch[-1].metadata if batch else None
            if last is None or not last.num_pending:
                break
    finally:
        await subscription.unsubscribe()
    found.sort(key=lambda x: x.position)
    return found
