"""The API's view of the access stream: which secrets are valid keys, and owners' quotas.

On start it asks a command handler for the access stream as stored
(``st.queries.access``), then follows the stream's events on JetStream, so a revocation
reaches every API process within the publish latency (well under a second). An event
whose stream version leaves a gap (the EVENTS stream expired older ones, or this process
missed some) makes it ask the handler again, so the view never silently drifts.

Lookups go by the SHA-256 of the presented secret: nothing here ever holds a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from ..bus import subjects
from ..bus.feed import EventFeed
from ..bus.messages import AccessAnswer
from ..core.access import (
    ACCESS_STREAM,
    AccessState,
    ApiKey,
    Quota,
    decode_access_event,
    evolve_access,
    hash_secret,
)
from ..core.errors import SwiftTrainerError
from ..core.store import RecordedEvent
from ..core.tasks import unsubscribe_quietly

_log = logging.getLogger(__name__)

#: The subject of the access stream's events on EVENTS.
ACCESS_EVENTS: Final = f"{subjects.EVENTS_ROOT}.system.*.{ACCESS_STREAM}.*"
#: Every API process answers with its keys' last use (core NATS, no queue group).
KEY_USAGE: Final = f"{subjects.PREFIX}.queries.key-usage"
_answer: Final = msgspec.json.Decoder(AccessAnswer)
_usage_encoder: Final = msgspec.json.Encoder()
_usage_decoder: Final = msgspec.json.Decoder(dict[str, datetime])


class AccessUnavailable(SwiftTrainerError):
    code = "access_unavailable"


async def fetch_access(nc: Client, *, timeout: float = 5.0) -> AccessState:
    """The access stream as a command handler folds it now."""
    try:
        msg = await nc.request(subjects.ACCESS_QUERY, b"{}", timeout=timeout)
    except (NatsTimeoutError, NoRespondersError) as exc:
        raise AccessUnavailable(
            "no command handler answered the access query; is 'up' or 'handler' running?"
        ) from exc
    try:
        answer = _answer.decode(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise AccessUnavailable(f"unreadable access answer: {exc}") from exc
    if answer.error is not None:
        raise AccessUnavailable(answer.error.message, code=answer.error.code)
    return answer.state


async def gather_key_usage(nc: Client, *, wait_s: float = 0.5) -> dict[str, datetime]:
    """The latest use of each key over every API process that answers within ``wait_s``."""
    inbox = nc.new_inbox()
    found: dict[str, datetime] = {}
    subscription = await nc.subscribe(inbox)
    try:
        await nc.publish(KEY_USAGE, b"", reply=inbox)
        deadline = asyncio.get_running_loop().time() + wait_s
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                msg = await subscription.next_msg(timeout=left)
            except NatsTimeoutError:
                break
            try:
                usage = _usage_decoder.decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            for key_id, at in usage.items():
                if key_id not in found or at > found[key_id]:
                    found[key_id] = at
    finally:
        await unsubscribe_quietly(subscription)
    return found


class AccessView:
    """Valid keys by secret hash, quotas by owner, and when each key was last used."""

    def __init__(self, state: AccessState | None = None) -> None:
        self.state = AccessState()
        self._by_hash: dict[str, ApiKey] = {}
        #: key id -> last successful use (this process only; ``keys list`` shows it).
        self.last_used: dict[str, datetime] = {}
        if state is not None:
            self.replace(state)

    def replace(self, state: AccessState) -> None:
        if state.version < self.state.version:
            return
        self.state = state
        self._by_hash = {k.secret_sha256: k for k in state.keys.values() if k.active}

    def apply(self, events: Sequence[RecordedEvent]) -> bool:
        """Fold events of the access stream; False when one leaves a gap (refetch)."""
        for recorded in events:
            if recorded.stream_id != ACCESS_STREAM or recorded.version <= self.state.version:
                continue
            if recorded.version != self.state.version + 1:
                return False
            try:
                event = decode_access_event(recorded.type, recorded.payload)
            except SwiftTrainerError as exc:
                _log.warning("access view skips event %d: %s", recorded.position, exc)
                return False
            self.replace(evolve_access(self.state, event))
        return True

    def authenticate(self, secret: str) -> ApiKey | None:
        key = self._by_hash.get(hash_secret(secret))
        if key is not None:
            self.last_used[key.key_id] = datetime.now(UTC)
        return key

    def quota(self, owner: str) -> Quota:
        return self.state.quotas.get(owner, Quota())


class AccessFollower:
    """Keeps an ``AccessView`` current: the handler's answer, then the live events."""

    def __init__(self, nc: Client, view: AccessView | None = None) -> None:
        self.nc = nc
        self.view = view or AccessView()
        self._feed: EventFeed | None = None
        self._refetching: asyncio.Task[None] | None = None
        self._usage: Subscription | None = None

    async def start(self, *, timeout: float = 30.0) -> None:
        self._usage = await self.nc.subscribe(KEY_USAGE, cb=self._on_usage)
        self._feed = EventFeed(self.nc, self._apply, subject=ACCESS_EVENTS, name="access")
        await self._feed.start()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:  # the handler may start after the API (compose): wait for it
            try:
                self.view.replace(await fetch_access(self.nc))
                return
            except AccessUnavailable:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def _apply(self, events: Sequence[RecordedEvent]) -> None:
        if not self.view.apply(events) and (self._refetching is None or self._refetching.done()):
            self._refetching = asyncio.create_task(self._refetch())

    async def _refetch(self) -> None:
        try:
            self.view.replace(await fetch_access(self.nc))
        except SwiftTrainerError as exc:
            _log.warning("could not refresh the access view: %s", exc)

    async def _on_usage(self, msg: Msg) -> None:
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(_usage_encoder.encode(self.view.last_used))

    async def stop(self) -> None:
        await unsubscribe_quietly(self._usage)
        self._usage = None
        if self._feed is not None:
            await self._feed.stop()
            self._feed = None
        if self._refetching is not None:
            self._refetching.cancel()
