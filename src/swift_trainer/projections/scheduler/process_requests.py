"""Process the queue now: the NATS request/reply side of the scheduler.

Every instance subscribes to ``PROCESS_SUBJECT`` in one queue group, so one of them gets each
request: the leader answers it with a pass, a standby forwards it to the leader on its
``direct_subject``. A forwarded request is answered where it lands and never forwarded again,
so there are no loops. Whatever fails, the asker gets a ``PassResult`` saying why.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Final, Protocol

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from swift_trainer.bus import subjects

from .leader_lease import LeaderLease
from .pass_result import PassResult, not_processed

_log = logging.getLogger(__name__)

#: Ask the scheduler to process the queue now; any instance answers (see ``PassResult``).
PROCESS_SUBJECT: Final = f"{subjects.PREFIX}.scheduler.process"
#: Queue group of ``PROCESS_SUBJECT``: one instance answers each request.
SCHEDULERS_QUEUE: Final = "schedulers"

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(PassResult)


def direct_subject(scheduler_id: str) -> str:
    """Where one instance takes process requests (a standby forwards them there)."""
    return f"{PROCESS_SUBJECT}.{scheduler_id}"


class Processor(Protocol):
    """What of a scheduler instance the request side needs."""

    nc: Client
    scheduler_id: str
    command_timeout_s: float
    lease: LeaderLease | None

    @property
    def is_leader(self) -> bool: ...

    async def process_now(self) -> PassResult: ...


async def subscribe_process_requests(processor: Processor) -> list[Subscription]:
    """Take requests on the shared subject (forwarding when not leading) and on this
    instance's direct subject (answering here)."""

    async def shared(msg: Msg) -> None:
        await _answer(processor, msg, may_forward=True)

    async def direct(msg: Msg) -> None:
        await _answer(processor, msg, may_forward=False)

    nc = processor.nc
    return [
        await nc.subscribe(PROCESS_SUBJECT, queue=SCHEDULERS_QUEUE, cb=shared),
        await nc.subscribe(direct_subject(processor.scheduler_id), cb=direct),
    ]


async def _answer(processor: Processor, msg: Msg, *, may_forward: bool) -> None:
    """The leader (or any instance, for a forwarded request) answers; a standby forwards."""
    try:
        if may_forward and not processor.is_leader:
            data = await _forward(processor, msg.data)
        else:
            data = _encoder.encode(await processor.process_now())
    except Exception as exc:
        _log.exception("process request failed")
        data = _encoder.encode(not_processed(repr(exc)))
    if msg.reply:
        with contextlib.suppress(Exception):
            await msg.respond(data)


async def _forward(processor: Processor, payload: bytes) -> bytes:
    lease = processor.lease
    holder = None if lease is None else await lease.read_holder()
    if holder is None or holder == processor.scheduler_id:
        reason = "no scheduler leads right now; try again in a few seconds"
        return _encoder.encode(not_processed(reason))
    try:
        reply = await processor.nc.request(
            direct_subject(holder), payload or b"{}", timeout=processor.command_timeout_s
        )
    except Exception as exc:
        return _encoder.encode(not_processed(f"the leader did not answer ({exc!r})", holder))
    return reply.data


async def request_processing(nc: Client, *, timeout: float = 10.0) -> PassResult:
    """Ask the scheduler to process the queue now, from any process (the API's trigger).

    Returns the leader's ``PassResult``, or ``processed: false`` with a reason when no
    scheduler runs, none answers in time, or the answer cannot be read.
    """
    try:
        reply = await nc.request(PROCESS_SUBJECT, b"{}", timeout=timeout)
    except NoRespondersError:
        return not_processed("no scheduler is running")
    except (TimeoutError, NatsTimeoutError):
        return not_processed("no scheduler answered in time")
    try:
        return _decoder.decode(reply.data)
    except msgspec.DecodeError as exc:
        return not_processed(f"the scheduler's answer could not be read: {exc}")
