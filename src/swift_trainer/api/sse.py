"""Server-sent event streams that follow the read model, woken early by NATS.

A follower reads from the read model with a cursor (log ``seq``, event position), the same
queries the paged endpoints use, so a stream can neither skip nor repeat what a page would
show. NATS messages on the job's subjects only say "look now": a missed or malformed
message costs at most one poll interval, never a gap. Every message carries an ``id`` where
the cursor allows it, so a reconnecting ``EventSource`` resumes via ``Last-Event-ID``.

A stream ends with an ``end`` event once there is nothing more to follow (the job finished
or was deleted); a failure mid-stream becomes an ``error`` event, since a status code can
no longer be sent after the first byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from litestar import Request
from litestar.background_tasks import BackgroundTask, BackgroundTasks
from litestar.datastructures import Cookie
from litestar.enums import MediaType
from litestar.response import ServerSentEvent
from litestar.response.base import ASGIResponse
from litestar.response.sse import ServerSentEventMessage
from litestar.types import TypeEncodersMap

from .deps import Subscriber

if TYPE_CHECKING:
    from litestar import Litestar

_log = logging.getLogger(__name__)

#: ``(messages to send, finished)``; called again after each wake-up or poll interval.
Poll = Callable[[], Awaitable[tuple[list[ServerSentEventMessage], bool]]]


class EventStream(ServerSentEvent):
    """An SSE response that keeps ``text/event-stream`` from a JSON-typed handler.

    Litestar's streaming response prefers the handler's media type over its own, so a
    handler that answers JSON or, with ``?follow=true``, a stream would label the stream
    ``application/json``; this pins the SSE media type.
    """

    def to_asgi_response(
        self,
        app: Litestar | None,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        return super().to_asgi_response(
            app,
            request,
            background=background,
            cookies=cookies,
            encoded_headers=encoded_headers,
            headers=headers,
            is_head_response=is_head_response,
            media_type="text/event-stream",
            status_code=status_code,
            type_encoders=type_encoders,
        )


def data_message(payload: Any, *, message_id: int | str | None = None) -> ServerSentEventMessage:
    return ServerSentEventMessage(data=msgspec.json.encode(payload).decode(), id=message_id)


def control_message(event: str, payload: Any) -> ServerSentEventMessage:
    return ServerSentEventMessage(event=event, data=msgspec.json.encode(payload).decode())


def last_event_id(request: Request[Any, Any, Any]) -> int | None:
    """The cursor a reconnecting EventSource sends back; ignored unless it is a number."""
    value = request.headers.get("last-event-id", "").strip()
    if value.lstrip("-").isdigit() and len(value) < 20:
        return int(value)
    return None


class Wakeup:
    """Set by any message on the given subjects; a missing subscriber just never fires."""

    def __init__(self, subscribe: Subscriber | None, subjects: Sequence[str]) -> None:
        self._subscribe = subscribe
        self._subjects = subjects
        self._event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Wakeup:
        if self._subscribe is not None:
            for subject in self._subjects:
                self._tasks.append(asyncio.create_task(self._listen(self._subscribe, subject)))
        return self

    async def _listen(self, subscribe: Subscriber, subject: str) -> None:
        messages = subscribe(subject)
        try:
            async for _ in messages:
                self._event.set()
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.warning("live updates on %s stopped; polling only", subject, exc_info=True)
        finally:
            close = getattr(messages, "aclose", None)
            if close is not None:
                await close()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()
        self._event.clear()

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # The stream's own scope may be cancelled (client gone): finish the cleanup anyway.
            with anyio.move_on_after(5, shield=True):
                await asyncio.gather(*self._tasks, return_exceptions=True)


async def follow(
    poll: Poll,
    *,
    subscribe: Subscriber | None,
    subjects: Sequence[str],
    poll_s: float,
    heartbeat_s: float,
) -> AsyncIterator[ServerSentEventMessage]:
    async with Wakeup(subscribe, subjects) as wakeup:
        last_sent = time.monotonic()
        while True:
            try:
                messages, finished = await poll()
            except Exception as exc:
                _log.warning("stream on %s failed", subjects, exc_info=True)
                yield control_message("error", {"detail": f"{type(exc).__name__}: {exc}"})
                return
            for message in messages:
                yield message
            now = time.monotonic()
            if messages:
                last_sent = now
            if finished:
                yield control_message("end", {"reason": "nothing more to follow"})
                return
            if now - last_sent >= heartbeat_s:
                yield ServerSentEventMessage(comment="keepalive", data=None)
                last_sent = now
            await wakeup.wait(max(0.01, min(poll_s, heartbeat_s - (now - last_sent))))


def event_stream(messages: AsyncIterator[ServerSentEventMessage]) -> EventStream:
    return EventStream(messages, headers={"Cache-Control": "no-cache"})
