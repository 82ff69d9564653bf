"""Access: API keys (who may call the API, in which role) and per-owner quotas, as events.

Both live in one stream, ``access``: issuing and revoking keys and setting quotas are rare
admin acts, and one stream gives them one order and one audit trail (the actor who did it
rides in each event's metadata; ``at`` says when).

Secrets never enter the system: the client that makes a key draws a high-entropy secret
(:func:`new_secret`, 256 random bits), sends only its SHA-256 (:func:`hash_secret`) in
``IssueKey`` and shows the secret once to the person who asked. A plain hash is enough for
a random 256-bit secret (there is nothing to guess); a slow password hash would only cost
every request time.

Like the webhook events, these live outside the job event union on purpose: the job
projections have no business with them (``is_access_stream``); the scheduler folds only
``QuotaSet`` (an owner's ``max_gpus``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime
from typing import Final

import msgspec

from .commands import AnyAccessCommand, IssueKey, RevokeKey, Role, SetQuota
from .errors import DomainError
from .events import Event, decode_tagged

ACCESS_STREAM: Final = "access"
#: Secrets start with this, so a leaked one is recognisable (secret scanners, logs).
SECRET_PREFIX: Final = "stk_"  # noqa: S105 - a marker, not a secret

ROLES: Final[tuple[Role, ...]] = ("admin", "user", "viewer")


class KeyNotFound(DomainError):
    code = "key_not_found"


class KeyAlreadyExists(DomainError):
    code = "key_already_exists"


def new_secret() -> str:
    """A fresh API key secret: the prefix and 43 URL-safe characters (256 bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)


def new_key_id() -> str:
    return "key-" + secrets.token_hex(6)


# --- events -----------------------------------------------------------------------------------


class AccessEvent(Event, frozen=True):
    """Base of the access events: tagged and timed like job events, decoded apart."""


class KeyIssued(AccessEvent, frozen=True, tag=True):
    key_id: str
    owner: str
    role: str
    secret_sha256: str


class KeyRevoked(AccessEvent, frozen=True, tag=True):
    key_id: str
    reason: str = ""


class QuotaSet(AccessEvent, frozen=True, tag=True):
    owner: str
    max_gpus: int | None = None
    max_queued_jobs: int | None = None


AnyAccessEvent = KeyIssued | KeyRevoked | QuotaSet
ACCESS_EVENT_TYPES: Final[dict[str, type[AccessEvent]]] = {
    cls.__name__: cls for cls in AnyAccessEvent.__args__
}
_decoder: Final[msgspec.json.Decoder[AnyAccessEvent]] = msgspec.json.Decoder(AnyAccessEvent)


def is_access_stream(stream_id: str) -> bool:
    return stream_id == ACCESS_STREAM


def decode_access_event(type_name: str, payload: bytes) -> AnyAccessEvent:
    return decode_tagged(_decoder, ACCESS_EVENT_TYPES, type_name, payload, "access")


# --- state ------------------------------------------------------------------------------------


class ApiKey(msgspec.Struct, frozen=True):
    key_id: str
    owner: str
    role: str
    secret_sha256: str
    issued_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class Quota(msgspec.Struct, frozen=True):
    max_gpus: int | None = None
    max_queued_jobs: int | None = None


class AccessState(msgspec.Struct, frozen=True):
    version: int = 0
    keys: dict[str, ApiKey] = {}
    quotas: dict[str, Quota] = {}


def decide_access(
    state: AccessState, command: AnyAccessCommand, now: datetime
) -> list[AnyAccessEvent]:
    """Revoking a revoked key, or setting the quota already set, records nothing."""
    match command:
        case IssueKey(key_id=key_id, owner=owner, role=role, secret_sha256=digest):
            if key_id in state.keys:
                raise KeyAlreadyExists(f"key {key_id!r} exists; pick another id")
            return [KeyIssued(at=now, key_id=key_id, owner=owner, role=role, secret_sha256=digest)]
        case RevokeKey(key_id=key_id, reason=reason):
            key = state.keys.get(key_id)
            if key is None:
                raise KeyNotFound(f"no key {key_id!r}; 'swift-trainer keys list' shows them")
            return [KeyRevoked(at=now, key_id=key_id, reason=reason)] if key.active else []
        case SetQuota(owner=owner, max_gpus=gpus, max_queued_jobs=queued):
            if state.quotas.get(owner, Quota()) == Quota(gpus, queued):
                return []
            return [QuotaSet(at=now, owner=owner, max_gpus=gpus, max_queued_jobs=queued)]
    raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover


def evolve_access(state: AccessState, event: AnyAccessEvent) -> AccessState:
    keys, quotas = state.keys, state.quotas
    match event:
        case KeyIssued(key_id=key_id, owner=owner, role=role, secret_sha256=digest, at=at):
            keys = {**keys, key_id: ApiKey(key_id, owner, role, digest, at)}
        case KeyRevoked(key_id=key_id, at=at):
            if key_id in keys:
                keys = {**keys, key_id: msgspec.structs.replace(keys[key_id], revoked_at=at)}
        case QuotaSet(owner=owner, max_gpus=gpus, max_queued_jobs=queued):
            quotas = {**quotas, owner: Quota(gpus, queued)}
    return AccessState(state.version + 1, keys, quotas)
