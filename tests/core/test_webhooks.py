"""Webhook registrations and deliveries as a pure aggregate, and the signature receivers check."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from swift_trainer.core import webhook_events as w
from swift_trainer.core.errors import MessageError, UnknownMessageType

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_fold_tracks_cursor_retries_and_removal() -> None:
    events: list[w.AnyWebhookEvent] = [
        w.WebhookRegistered(at=T0, webhook_id="ops", url="http://x/h", start_after=10),
        w.WebhookDeliveryFailed(
            at=T0,
            webhook_id="ops",
            position=12,
            event_id="e12",
            event_type="JobFailed",
            attempt=1,
            error="HTTP 503",
            status_code=503,
            retry_at=T0 + timedelta(seconds=2),
        ),
        w.WebhookDelivered(
            at=T0,
            webhook_id="ops",
            position=12,
            event_id="e12",
            event_type="JobFailed",
            attempt=2,
            status_code=200,
            duration_ms=3.0,
        ),
    ]
    state = w.fold_webhook("ops", events[:1])
    assert (state.active, state.cursor, state.retrying) == (True, 10, None)
    state = w.fold_webhook("ops", events[:2])
    assert (state.cursor, state.retrying, state.attempts) == (10, 12, 1)
    state = w.fold_webhook("ops", events)
    assert (state.cursor, state.retrying, state.delivered, state.version) == (12, None, 1, 3)
    gave_up = w.WebhookDeliveryFailed(
        at=T0,
        webhook_id="ops",
        position=15,
        event_id="e15",
        event_type="JobFailed",
        attempt=8,
        error="timeout",
    )
    state = w.evolve_webhook(state, gave_up)
    assert (state.cursor, state.abandoned) == (15, 1)
    state = w.evolve_webhook(state, w.WebhookRemoved(at=T0, webhook_id="ops"))
    assert not state.active


def test_events_round_trip_and_bad_payloads_are_clear_errors() -> None:
    event = w.WebhookRegistered(at=T0, webhook_id="a", url="https://r", event_types=("Job*",))
    payload = w.encode_webhook_event(event)
    assert w.decode_webhook_event("WebhookRegistered", payload) == event
    with pytest.raises(MessageError, match="holds a WebhookRegistered"):
        w.decode_webhook_event("WebhookRemoved", payload)
    with pytest.raises(UnknownMessageType):
        w.decode_webhook_event("WebhookExploded", payload)
    with pytest.raises(MessageError):
        w.decode_webhook_event("WebhookRegistered", b"{")


def test_filters() -> None:
    assert w.wants((), "JobQueued")
    assert w.wants(("JobSucceeded", "JobFailed"), "JobFailed")
    assert w.wants(("Job*ed",), "JobStarted")
    assert not w.wants(("JobSucceeded",), "JobSucceededX")
    with pytest.raises(w.WebhookError, match="must start with http"):
        w.validate_registration("ftp://x", ())
    with pytest.raises(w.WebhookError, match="invalid event filter"):
        w.validate_registration("http://x", ("Job Failed",))


def test_signatures_bind_body_and_time() -> None:
    secret = w.webhook_secret(b"deployment-key", "ops")
    assert secret != w.webhook_secret(b"deployment-key", "other")
    assert secret != w.webhook_secret(b"another-key", "ops")
    now = int(time.time())
    body = b'{"type":"JobSucceeded"}'
    headers = {w.TIMESTAMP_HEADER: str(now), w.SIGNATURE_HEADER: w.sign(secret, now, body)}
    assert w.verify_signature(secret, headers, body, now=now)
    assert not w.verify_signature(secret, headers, body + b" ", now=now)
    assert not w.verify_signature("wrong", headers, body, now=now)
    # A replay ten minutes later is refused, even with the original signature.
    assert not w.verify_signature(secret, headers, body, now=now + 600)
    moved = {**headers, w.TIMESTAMP_HEADER: str(now + 600)}
    assert not w.verify_signature(secret, moved, body, now=now + 600)
    assert not w.verify_signature(secret, {}, body, now=now)
