"""Sending commands over NATS request/reply, with the trace context in the headers."""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry import trace

from ..core.commands import AnyCommand
from ..core.errors import MessageError, SwiftTrainerError
from ..core.ids import new_id
from . import subjects
from .messages import (
    CommandEnvelope,
    CommandReply,
    JobStateAnswer,
    JobStateQuery,
    decode_reply,
    encode,
)
from .trace_headers import inject_headers

_tracer = trace.get_tracer(__name__)

#: How long a command waits for a handler to (re)subscribe before it is reported unavailable.
NO_RESPONDERS_PATIENCE_S: Final = 3.0


class CommandUnavailable(SwiftTrainerError):
    """No handler answered in time; the command may or may not have been recorded.

    Retrying with the same command id is always safe.
    """

    code = "command_unavailable"


class CommandClient:
    def __init__(self, nc: Client, *, timeout: float = 10.0, actor: str | None = None) -> None:
        self.nc = nc
        self.timeout = timeout
        self.actor = actor

    def envelope(
        self,
        command: AnyCommand,
        command_id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        actor: str | None = None,
    ) -> CommandEnvelope:
        """The envelope a send carries: a new id unless given, this client's actor."""
        return CommandEnvelope(
            command_id=command_id or new_id(),
            command=command,
            correlation_id=correlation_id,
            causation_id=causation_id,
            actor=actor or self.actor,
        )

    async def send(
        self,
        command: AnyCommand,
        *,
        command_id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        actor: str | None = None,
        timeout: float | None = None,
        retries: int = 2,
    ) -> CommandReply:
        """Send and wait for the outcome; lost replies are retried with the same id."""
        envelope = self.envelope(command, command_id, correlation_id, causation_id, actor)
        name = type(command).__name__
        with send_span(envelope):
            data = encode(envelope)
            headers = inject_headers()
            wait = timeout or self.timeout
            loop = asyncio.get_running_loop()
            # No responders means no handler is subscribed right now (one is reconnecting
            # to another node of a cluster, or restarting): retried with a back-off for up
            # to ``NO_RESPONDERS_PATIENCE_S``, long enough for a failover, short enough that
            # a caller learns soon when no handler runs at all.
            deadline = loop.time() + wait * (retries + 1)
            patience = loop.time() + min(wait, NO_RESPONDERS_PATIENCE_S)
            timeouts = 0
            pause = 0.05
            last: Exception | None = None
            while timeouts <= retries and loop.time() < deadline:
                try:
                    msg = await self.nc.request(
                        subjects.command_subject(name),
                        data,
                        timeout=min(wait, max(deadline - loop.time(), 0.05)),
                        headers=headers,
                    )
                except NoRespondersError as exc:
                    last = exc
                    if loop.time() + pause > patience:
                        break
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 1.0)
                    continue
                except (TimeoutError, NatsTimeoutError) as exc:
                    last = exc
                    timeouts += 1
                    await asyncio.sleep(0.05 * timeouts)
                    continue
                return decode_reply(msg.data)
        raise CommandUnavailable(
            f"no command handler answered {name} {envelope.command_id} ({last!r}); "
            "retry with the same command id",
        )

    async def job_state(self, job_id: str, *, timeout: float | None = None) -> JobStateAnswer:
        """The job's state as stored now (the handler reads the store to answer).

        Raises ``CommandUnavailable`` when no handler answers, and ``MessageError`` when the
        answer cannot be read: a caller about to destroy work must then hold off.
        """
        try:
            msg = await self.nc.request(
                subjects.JOB_STATE_QUERY,
                encode(JobStateQuery(job_id=job_id)),
                timeout=timeout or self.timeout,
                headers=inject_headers(),
            )
        except (TimeoutError, NatsTimeoutError, NoRespondersError) as exc:
            raise CommandUnavailable(f"no command handler answered the state of {job_id}") from exc
        try:
            answer = msgspec.json.decode(msg.data, type=JobStateAnswer)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise MessageError(f"invalid job state answer: {exc}") from exc
        if answer.error is not None:
            raise CommandUnavailable(f"the state of {job_id} is unknown: {answer.error.message}")
        return answer


def send_span(envelope: CommandEnvelope) -> AbstractContextManager[trace.Span]:
    """The producer span of one command send, whichever way the command travels."""
    name = type(envelope.command).__name__
    return _tracer.start_as_current_span(
        f"send {name}",
        kind=trace.SpanKind.PRODUCER,
        attributes={"command.type": name, "command.id": envelope.command_id},
    )
