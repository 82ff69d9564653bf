"""Webhooks, for integrators who do not run NATS: registrations and deliveries as events.

Each webhook is one event-store stream, ``webhook-<id>``: registered (URL and an event
filter), each delivery's outcome (delivered, or failed with the next retry time or given
up), removed. Folding the stream gives everything the dispatcher needs to resume after a
restart (where the webhook's cursor stands, how many attempts the current event has had),
and the audit trail shows every attempt.

Signing: a delivery carries ``X-Swift-Trainer-Timestamp`` (Unix seconds) and
``X-Swift-Trainer-Signature: sha256=<hex>``, the HMAC-SHA256 of ``<timestamp>.<body>`` under
the webhook's secret. The timestamp is inside the MAC, so a receiver that refuses old
timestamps (:func:`verify_signature`, 5 minutes by default) cannot be replayed. Secrets are
never stored in the event log: each is derived from the deployment's signing key and the
webhook id (:func:`webhook_secret`), and the admin hands it to the receiver's owner.

These events live outside the job event union on purpose: they are no job's business, and
the job projections skip ``webhook-`` streams without decoding them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar, Final

import msgspec

from .errors import SwiftTrainerError
from .events import decode_tagged

STREAM_PREFIX: Final = "webhook-"
SIGNATURE_HEADER: Final = "X-Swift-Trainer-Signature"
TIMESTAMP_HEADER: Final = "X-Swift-Trainer-Timestamp"
DELIVERY_HEADER: Final = "X-Swift-Trainer-Delivery"
EVENT_HEADER: Final = "X-Swift-Trainer-Event"
#: How old a timestamp a receiver accepts by default.
DEFAULT_TOLERANCE_S: Final = 300.0


class WebhookError(SwiftTrainerError):
    code = "invalid_webhook"


def webhook_stream(webhook_id: str) -> str:
    return f"{STREAM_PREFIX}{webhook_id}"


def is_webhook_stream(stream_id: str) -> bool:
    return stream_id.startswith(STREAM_PREFIX)


class WebhookEvent(msgspec.Struct, frozen=True, tag_field="type", omit_defaults=True):
    schema_version: ClassVar[int] = 1
    at: datetime
    webhook_id: str


class WebhookRegistered(WebhookEvent, frozen=True, tag=True):
    url: str
    #: Event types to deliver; ``fnmatch`` patterns (``Job*``); empty means every job event.
    event_types: tuple[str, ...] = ()
    #: Who registered it (also in the event metadata's actor).
    registered_by: str | None = None
    description: str = ""
    #: Deliveries start after this global position (the log's end at registration).
    start_after: int = 0
    #: Deliver only the events of this owner's jobs (a ``user`` key's webhook); None:
    #: every event the filter selects (an admin's).
    owner: str | None = None


class WebhookRemoved(WebhookEvent, frozen=True, tag=True):
    reason: str = ""


class WebhookDelivered(WebhookEvent, frozen=True, tag=True):
    #: The delivered event: its global position, id and type.
    position: int
    event_id: str
    event_type: str
    attempt: int
    status_code: int
    duration_ms: float


class WebhookDeliveryFailed(WebhookEvent, frozen=True, tag=True):
    position: int
    event_id: str
    event_type: str
    attempt: int
    error: str
    status_code: int | None = None
    #: When the next attempt is due; ``None``: given up, the webhook moves on.
    retry_at: datetime | None = None


AnyWebhookEvent = WebhookRegistered | WebhookRemoved | WebhookDelivered | WebhookDeliveryFailed
WEBHOOK_EVENT_TYPES: Final[dict[str, type[WebhookEvent]]] = {
    cls.__name__: cls for cls in AnyWebhookEvent.__args__
}
_decoder: Final[msgspec.json.Decoder[AnyWebhookEvent]] = msgspec.json.Decoder(AnyWebhookEvent)
_encoder: Final = msgspec.json.Encoder()


def encode_webhook_event(event: WebhookEvent) -> bytes:
    return _encoder.encode(event)


def decode_webhook_event(type_name: str, payload: bytes) -> AnyWebhookEvent:
    return decode_tagged(_decoder, WEBHOOK_EVENT_TYPES, type_name, payload, "webhook")


class WebhookState(msgspec.Struct, frozen=True):
    """A webhook as its stream says: where its delivery stands."""

    webhook_id: str
    version: int = 0
    url: str | None = None
    event_types: tuple[str, ...] = ()
    removed: bool = False
    #: Global position of the last event delivered or given up on.
    cursor: int = 0
    #: The event now being retried (position), its failed attempts and the next try.
    retrying: int | None = None
    attempts: int = 0
    retry_at: datetime | None = None
    delivered: int = 0
    abandoned: int = 0
    #: Only this owner's jobs' events are delivered (None: every job's).
    owner: str | None = None
    registered_by: str | None = None
    description: str = ""

    @property
    def active(self) -> bool:
        return self.url is not None and not self.removed


def evolve_webhook(state: WebhookState, event: AnyWebhookEvent) -> WebhookState:
    version = state.version + 1
    match event:
        case WebhookRegistered():
            return msgspec.structs.replace(
                state,
                version=version,
                url=event.url,
                event_types=event.event_types,
                owner=event.owner,
                registered_by=event.registered_by,
                description=event.description,
                removed=False,
                cursor=max(state.cursor, event.start_after),
            )
        case WebhookRemoved():
            return msgspec.structs.replace(state, version=version, removed=True)
        case WebhookDelivered():
            return msgspec.structs.replace(
                state,
                version=version,
                cursor=max(state.cursor, event.position),
                retrying=None,
                attempts=0,
                retry_at=None,
                delivered=state.delivered + 1,
            )
        case WebhookDeliveryFailed(retry_at=None):
            return msgspec.structs.replace(
                state,
                version=version,
                cursor=max(state.cursor, event.position),
                retrying=None,
                attempts=0,
                retry_at=None,
                abandoned=state.abandoned + 1,
            )
        case WebhookDeliveryFailed():
            return msgspec.structs.replace(
                state,
                version=version,
                retrying=event.position,
                attempts=event.attempt,
                retry_at=event.retry_at,
            )
    raise AssertionError(f"unhandled webhook event {event!r}")  # pragma: no cover


def fold_webhook(webhook_id: str, events: Sequence[AnyWebhookEvent]) -> WebhookState:
    state = WebhookState(webhook_id=webhook_id)
    for event in events:
        state = evolve_webhook(state, event)
    return state


def validate_registration(url: str, event_types: Sequence[str]) -> None:
    """A clear refusal for what could never deliver."""
    if not url.startswith(("http://", "https://")):
        raise WebhookError(f"webhook URL {url!r} must start with http:// or https://")
    for pattern in event_types:
        if not pattern or any(c.isspace() for c in pattern):
            raise WebhookError(f"invalid event filter {pattern!r}: use names like JobSucceeded")


def wants(event_types: Sequence[str], event_type: str) -> bool:
    """Does a webhook's filter select this event type? Empty selects every one."""
    return not event_types or any(fnmatch.fnmatchcase(event_type, p) for p in event_types)


def webhook_secret(signing_key: bytes, webhook_id: str) -> str:
    """The webhook's own secret, derived so that the event log never holds one."""
    return hmac.new(signing_key, f"webhook:{webhook_id}".encode(), hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for a body sent at ``timestamp`` (Unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    headers: Any,
    body: bytes,
    *,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """What a receiver checks: a fresh timestamp and a matching MAC (constant time)."""
    try:
        timestamp = int(headers[TIMESTAMP_HEADER])
        signature = str(headers[SIGNATURE_HEADER])
    except (KeyError, ValueError, TypeError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)
