"""Wire envelopes: a command request, its reply, and a stored event as published.

Payloads stay JSON end to end so an integrator can read the EVENTS stream with nothing but
a NATS client; the event itself is embedded raw (``msgspec.Raw``), exactly as stored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from ..core.access import AccessState
from ..core.commands import AnyCommand
from ..core.errors import MessageError, SwiftTrainerError, UnknownMessageType
from ..core.store import EventMetadata, EventPlace, RecordedEvent


class LogMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    """One line of a job's (or export's) output on the LOGS stream (``st.logs.<job_id>``).

    ``seq`` only grows over a job's whole life (every attempt and runner), so a consumer
    can drop a line at or below the highest it has kept as a redelivery; the runner's
    ``log_publisher`` says how it is made.
    """

    job_id: str
    attempt: int
    seq: int
    stream: Literal["stdout", "stderr"]
    line: str
    at: datetime
    runner_id: str
    export_id: str | None = None
    truncated: bool = False
    #: The rank of a multi-node job that wrote the line (None: a one-node job).
    rank: int | None = None


class LogBatch(msgspec.Struct, frozen=True):
    """Lines of one job's output read together, in one message on ``st.logs.<job_id>``.

    A chatty job's lines travel in batches so that JetStream writes (and, at
    ``sync_interval: always``, fsyncs) once per batch rather than once per line; a single
    line still travels as a plain ``LogMessage``. The lines are in ``seq`` order.
    """

    lines: tuple[LogMessage, ...]


class _AnyLogPayload(msgspec.Struct, frozen=True):
    lines: tuple[LogMessage, ...] | None = None


_any_log_decoder = msgspec.json.Decoder(_AnyLogPayload)
_log_decoder = msgspec.json.Decoder(LogMessage)


def decode_log_payload(data: bytes) -> tuple[LogMessage, ...]:
    """The lines of a LOGS message of either shape (``LogBatch`` or one ``LogMessage``).

    Raises ``msgspec.DecodeError``/``ValidationError`` for anything else.
    """
    batch = _any_log_decoder.decode(data)
    if batch.lines is not None:
        return batch.lines
    return (_log_decoder.decode(data),)


class CommandEnvelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    command_id: str
    command: AnyCommand
    correlation_id: str | None = None
    causation_id: str | None = None
    actor: str | None = None


class ReplyEvent(msgspec.Struct, frozen=True):
    event_id: str
    type: str
    position: int
    version: int


class ReplyError(msgspec.Struct, frozen=True):
    code: str
    message: str


class CommandReply(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the handler answers; ``error`` set means nothing was recorded."""

    command_id: str
    ok: bool
    stream_id: str | None = None
    version: int | None = None
    events: tuple[ReplyEvent, ...] = ()
    duplicate: bool = False
    error: ReplyError | None = None


class EventEnvelope(EventPlace, frozen=True):
    recorded_at: datetime
    metadata: EventMetadata
    event: msgspec.Raw

    def to_recorded(self) -> RecordedEvent:
        return RecordedEvent(
            position=self.position,
            stream_id=self.stream_id,
            version=self.version,
            event_id=self.event_id,
            type=self.type,
            schema_version=self.schema_version,
            payload=bytes(self.event),
            metadata=self.metadata,
            recorded_at=self.recorded_at,
        )

    @classmethod
    def from_recorded(cls, event: RecordedEvent) -> EventEnvelope:
        return cls(
            position=event.position,
            stream_id=event.stream_id,
            version=event.version,
            event_id=event.event_id,
            type=event.type,
            schema_version=event.schema_version,
            recorded_at=event.recorded_at,
            metadata=event.metadata,
            event=msgspec.Raw(event.payload),
        )


class JobStateQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Ask a command handler for a job's state as the event store holds it now."""

    job_id: str


class JobStateAnswer(msgspec.Struct, frozen=True, omit_defaults=True):
    """A job's stored state, as far as a runner needs it to decide whether to keep its
    process (``status`` "new" means the job does not exist; ``error`` means no answer)."""

    job_id: str
    status: str = "new"
    attempt: int = 0
    runner_id: str | None = None
    version: int = 0
    error: ReplyError | None = None


class AccessAnswer(msgspec.Struct, frozen=True, omit_defaults=True):
    """The access stream as stored (``st.queries.access``); ``error`` means no answer."""

    state: AccessState = AccessState()
    error: ReplyError | None = None


_json = msgspec.json.Encoder()
_envelope_decoder = msgspec.json.Decoder(CommandEnvelope)
_reply_decoder = msgspec.json.Decoder(CommandReply)
_event_decoder = msgspec.json.Decoder(EventEnvelope)


def encode(message: msgspec.Struct) -> bytes:
    return _json.encode(message)


def decode_envelope(data: bytes) -> CommandEnvelope:
    """Decode a command request; every problem becomes a MessageError that says why."""
    try:
        return _envelope_decoder.decode(data)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if "Invalid value" in text and text.endswith("`$.command.type`"):
            raise UnknownMessageType(f"unknown command type: {text}") from exc
        raise MessageError(f"invalid command envelope: {text}") from exc
    except msgspec.DecodeError as exc:
        raise MessageError(f"command envelope is not valid JSON: {exc}") from exc


def decode_reply(data: bytes) -> CommandReply:
    try:
        return _reply_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise MessageError(f"invalid command reply: {exc}") from exc


def decode_event_envelope(data: bytes) -> EventEnvelope:
    try:
        return _event_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise MessageError(f"invalid event envelope: {exc}") from exc


def error_reply(command_id: str, error: SwiftTrainerError) -> CommandReply:
    return CommandReply(
        command_id=command_id,
        ok=False,
        error=ReplyError(code=error.code, message=error.message),
    )
