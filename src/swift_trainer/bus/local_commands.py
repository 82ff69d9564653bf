"""Commands to the handler of this same process, without the NATS round trip.

When the API and a command handler share a process (``swift-trainer up``), a command need
not travel to nats-server and back: the envelope is encoded and decoded as on the wire (so
it passes the same checks), then handed to the handler's ``execute``. The decision, the
append, idempotency by command id and the reply are the handler's, exactly as over NATS.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from opentelemetry import context as otel_context

from ..core.commands import AnyCommand
from ..core.errors import SwiftTrainerError
from .command_client import CommandClient, CommandUnavailable, send_span
from .command_handler import CommandHandler
from .messages import CommandEnvelope, CommandReply, decode_envelope, encode, error_reply

_log = logging.getLogger(__name__)


class LocalCommandClient(CommandClient):
    """A ``CommandClient`` whose commands go straight to ``handler``; queries still use NATS."""

    def __init__(
        self,
        nc: Client,
        handler: CommandHandler,
        *,
        timeout: float = 10.0,
        actor: str | None = None,
    ) -> None:
        super().__init__(nc, timeout=timeout, actor=actor)
        self.handler = handler
        self._running: set[asyncio.Future[CommandReply]] = set()

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
        """Decide and record ``command`` here; the reply is the one NATS would carry."""
        envelope = self.envelope(command, command_id, correlation_id, causation_id, actor)
        name = type(command).__name__
        with send_span(envelope):
            try:
                checked = decode_envelope(encode(envelope))
            except SwiftTrainerError as exc:  # what the handler answers a malformed request
                return error_reply(envelope.command_id, exc)
            # As over NATS, the handler finishes what it started even when the caller
            # stops waiting; the caller then learns that the outcome is unknown.
            task = asyncio.ensure_future(self._execute(checked))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            try:
                async with asyncio.timeout((timeout or self.timeout) * (retries + 1)):
                    return await asyncio.shield(task)
            except TimeoutError:
                raise CommandUnavailable(
                    f"the command handler did not answer {name} {envelope.command_id} in "
                    "time; retry with the same command id",
                ) from None

    async def _execute(self, envelope: CommandEnvelope) -> CommandReply:
        try:
            # The send span's context, as is: the handler's span is its child.
            return await self.handler.execute(envelope, otel_context.get_current())
        except Exception as exc:  # as over NATS: an answer, never a crash
            _log.exception("unexpected error handling command %s", envelope.command_id)
            return error_reply(envelope.command_id, SwiftTrainerError(repr(exc)))
