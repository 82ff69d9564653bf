"""The webhook dispatcher: POSTs matching events to each registered URL, signed, in order.

It is a projection of the event store with one side effect: for each active webhook it
walks the global log from the webhook's cursor, posts each event its filter selects (the
same JSON envelope NATS subscribers get), and records the outcome as an event on the
webhook's own stream. Everything it needs to resume lives in those streams: after a restart
it continues with the first event neither delivered nor given up on, and honours a pending
back-off.

Guarantees: at least once, in log order per webhook (a failing receiver holds back only
its own queue, never another's). A failed attempt is retried after ``base_delay_s * 2**n``
(capped at ``max_delay_s``) until ``max_attempts``; then it is recorded as given up and the
webhook moves on. Two dispatchers on one store would race on the webhook streams' versions
(the loser's record is refused), so a receiver may see an event twice: it dedupes by
``X-Swift-Trainer-Delivery``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import httpx
import msgspec

from swift_trainer.bus.messages import EventEnvelope, encode
from swift_trainer.core import webhook_events as w
from swift_trainer.core.access import is_access_stream
from swift_trainer.core.clock import Clock, utc_now
from swift_trainer.core.errors import ConcurrencyConflict, MessageError, StoreError
from swift_trainer.core.events import decode_event
from swift_trainer.core.settings import Settings
from swift_trainer.core.sqlaudit import streams_with_prefix
from swift_trainer.core.sqlstore import SqlEventStore
from swift_trainer.core.store import EventMetadata, NewEvent, RecordedEvent

_log = logging.getLogger(__name__)


ACTOR: Final = "webhooks"
#: Job streams are ``job-<job id>``.
JOB_STREAM_PREFIX: Final = "job-"


class WebhookDispatcher:
    def __init__(
        self,
        store: SqlEventStore,
        signing_key: bytes,
        *,
        poll_s: float = 0.5,
        base_delay_s: float = 2.0,
        max_delay_s: float = 600.0,
        max_attempts: int = 8,
        timeout_s: float = 10.0,
        batch: int = 200,
        clock: Clock = utc_now,
    ) -> None:
        self.store = store
        self.signing_key = signing_key
        self.poll_s = poll_s
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.max_attempts = max_attempts
        self.batch = batch
        self.clock = clock
        self._http = httpx.AsyncClient(timeout=timeout_s)
        self._states: dict[str, w.WebhookState] = {}
        #: Per webhook, how far the log was scanned past the cursor (events it does not want).
        self._scanned: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        #: Each job stream's owner, read once from its submission.
        self._owners: dict[str, str | None] = {}

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._http.aclose()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except StoreError as exc:
                _log.warning("webhook pass failed, retrying: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._stopping.wait()

    # --- one pass -------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Deliver what is due to every active webhook; returns the attempts made."""
        attempts = 0
        for stream_id in await streams_with_prefix(self.store, w.STREAM_PREFIX):
            state = await self._state(stream_id)
            if state is not None and state.active:
                attempts += await self._serve(stream_id, state)
        return attempts

    async def _state(self, stream_id: str) -> w.WebhookState | None:
        webhook_id = stream_id.removeprefix(w.STREAM_PREFIX)
        state = self._states.get(webhook_id) or w.WebhookState(webhook_id=webhook_id)
        for recorded in await self.store.read_stream(stream_id, after_version=state.version):
            try:
                event = w.decode_webhook_event(recorded.type, recorded.payload)
            except MessageError as exc:
                _log.warning("webhook %s: unreadable event skipped: %s", webhook_id, exc)
                state = _skip_version(state)
                continue
            state = w.evolve_webhook(state, event)
        self._states[webhook_id] = state
        return state

    async def _serve(self, stream_id: str, state: w.WebhookState) -> int:
        attempts = 0
        while attempts < self.batch and state.active:
            if state.retry_at is not None and state.retry_at > self.clock():
                break
            event = await self._next(state)
            if event is None:
                break
            outcome = await self._deliver(state, event)
            attempts += 1
            try:
                await self.store.append(
                    stream_id,
                    [outcome],
                    expected_version=state.version,
                )
            except ConcurrencyConflict:
                _log.info("webhook %s moved under us (another dispatcher?)", state.webhook_id)
            refreshed = await self._state(stream_id)
            assert refreshed is not None
            state = refreshed
        return attempts

    async def _next(self, state: w.WebhookState) -> RecordedEvent | None:
        """The event to deliver now: the one being retried, else the next one wanted."""
        after = state.cursor
        if state.retrying is not None:
            after = state.retrying - 1
        else:
            after = max(after, self._scanned.get(state.webhook_id, 0))
        while True:
            batch = await self.store.read_all(after_position=after, limit=self.batch)
            if not batch:
                self._scanned[state.webhook_id] = after
                return None
            for recorded in batch:
                # Access events (keys, quotas) are never delivered: they are no
                # integrator's business, and a key's hash should stay in the store.
                if (
                    not w.is_webhook_stream(recorded.stream_id)
                    and not is_access_stream(recorded.stream_id)
                    and w.wants(state.event_types, recorded.type)
                    and await self._owner_may_see(state.owner, recorded.stream_id)
                ):
                    self._scanned[state.webhook_id] = recorded.position - 1
                    return recorded
            after = batch[-1].position

    async def _owner_may_see(self, owner: str | None, stream_id: str) -> bool:
        """An owner's webhook gets its own jobs' events only: no ledger, no other job."""
        if owner is None:
            return True
        if not stream_id.startswith(JOB_STREAM_PREFIX):
            return False
        if stream_id not in self._owners:
            first = await self.store.read_stream(stream_id)
            submitted = None
            if first and first[0].type == "JobSubmitted":
                with contextlib.suppress(MessageError):
                    submitted = decode_event(first[0].type, first[0].payload)
            spec = getattr(submitted, "spec", None)
            self._owners[stream_id] = spec.owner if spec is not None else None
        return self._owners[stream_id] == owner

    async def _deliver(self, state: w.WebhookState, event: RecordedEvent) -> NewEvent:
        assert state.url is not None
        attempt = state.attempts + 1 if state.retrying == event.position else 1
        delivery_id = f"{state.webhook_id}:{event.event_id}"
        body = encode(EventEnvelope.from_recorded(event))
        timestamp = int(time.time())
        secret = w.webhook_secret(self.signing_key, state.webhook_id)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "swift-trainer-webhooks",
            w.EVENT_HEADER: event.type,
            w.DELIVERY_HEADER: delivery_id,
            w.TIMESTAMP_HEADER: str(timestamp),
            w.SIGNATURE_HEADER: w.sign(secret, timestamp, body),
        }
        started = time.perf_counter()
        status: int | None = None
        try:
            response = await self._http.post(state.url, content=body, headers=headers)
            status = response.status_code
            error = "" if response.is_success else f"HTTP {status}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        now = self.clock()
        outcome: w.WebhookEvent
        if not error and status is not None:
            outcome = w.WebhookDelivered(
                at=now,
                webhook_id=state.webhook_id,
                position=event.position,
                event_id=event.event_id,
                event_type=event.type,
                attempt=attempt,
                status_code=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )
        else:
            retry_at = None
            if attempt < self.max_attempts:
                delay = min(self.base_delay_s * 2 ** (attempt - 1), self.max_delay_s)
                retry_at = now + timedelta(seconds=delay)
            _log.info(
                "webhook %s: delivery of %s failed (attempt %d): %s",
                state.webhook_id,
                event.event_id,
                attempt,
                error,
            )
            outcome = w.WebhookDeliveryFailed(
                at=now,
                webhook_id=state.webhook_id,
                position=event.position,
                event_id=event.event_id,
                event_type=event.type,
                attempt=attempt,
                error=error,
                status_code=status,
                retry_at=retry_at,
            )
        # One id per (webhook, event, attempt): a second dispatcher recording the same
        # attempt is answered as a duplicate instead of storing it twice.
        event_id = hashlib.sha256(f"{delivery_id}:{attempt}".encode()).hexdigest()[:32]
        return NewEvent(
            event_id=event_id,
            type=type(outcome).__name__,
            payload=w.encode_webhook_event(outcome),
            metadata=EventMetadata(actor=ACTOR, causation_id=event.event_id),
        )


def _skip_version(state: w.WebhookState) -> w.WebhookState:
    return msgspec.structs.replace(state, version=state.version + 1)


async def register_webhook(
    store: SqlEventStore,
    webhook_id: str,
    url: str,
    event_types: tuple[str, ...],
    *,
    actor: str,
    description: str = "",
    owner: str | None = None,
) -> RecordedEvent:
    """Record a registration; a webhook id is registered once. ``owner``: deliver only
    that owner's jobs' events (a ``user`` key's webhook)."""
    w.validate_registration(url, event_types)
    event = w.WebhookRegistered(
        at=datetime.now(UTC),
        webhook_id=webhook_id,
        url=url,
        event_types=event_types,
        registered_by=actor,
        description=description,
        start_after=await store.last_position(),
        owner=owner,
    )
    result = await store.append(
        w.webhook_stream(webhook_id),
        [
            NewEvent(
                event_id=hashlib.sha256(f"register:{webhook_id}".encode()).hexdigest()[:32],
                type="WebhookRegistered",
                payload=w.encode_webhook_event(event),
                metadata=EventMetadata(actor=actor),
            )
        ],
        expected_version=0,
    )
    return result.events[0]


async def remove_webhook(
    store: SqlEventStore, webhook_id: str, *, actor: str, reason: str = ""
) -> RecordedEvent:
    stream = w.webhook_stream(webhook_id)
    version = await store.stream_version(stream)
    if version == 0:
        raise w.WebhookError(f"no webhook {webhook_id!r}", code="webhook_not_found")
    event = w.WebhookRemoved(at=datetime.now(UTC), webhook_id=webhook_id, reason=reason)
    result = await store.append(
        stream,
        [
            NewEvent(
                event_id=hashlib.sha256(f"remove:{webhook_id}".encode()).hexdigest()[:32],
                type="WebhookRemoved",
                payload=w.encode_webhook_event(event),
                metadata=EventMetadata(actor=actor),
            )
        ],
        expected_version=version,
    )
    return result.events[0]


def load_signing_key(settings: Settings, env: dict[str, str] | None = None) -> bytes:
    """The deployment's key: the environment's, else a key file in the data dir."""
    value = (env if env is not None else os.environ).get("WEBHOOK_SIGNING_KEY")
    if value:
        return value.encode()
    path = Path(settings.data_dir) / "webhook-signing.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text(encoding="utf-8").strip().encode()
