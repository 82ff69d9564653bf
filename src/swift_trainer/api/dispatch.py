"""Turning an HTTP write into a command, and the command's reply into an answer or a problem.

Writes never touch the read model: the reply says what was recorded (event types, stream
version), which is enough to answer at once. A refusal comes back as the domain's error,
raised here as a ``SwiftTrainerError`` with the reply's code, so it maps to the same problem
details as an error raised in process.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable
from typing import Final

import msgspec

from ..bus.messages import CommandReply
from ..core.commands import AnyCommand, SubmitJob
from ..core.errors import SwiftTrainerError
from ..core.job import JobStatus
from .auth.principal import principal
from .auth.quota import check_queued_quota
from .deps import ApiDeps

#: What a job's status is right after an event of this type.
STATUS_AFTER: Final[dict[str, JobStatus]] = {
    "JobHeld": JobStatus.HELD,
    "JobQueued": JobStatus.QUEUED,
    "JobRequeued": JobStatus.QUEUED,
    "JobScheduled": JobStatus.SCHEDULED,
    "JobStarted": JobStatus.RUNNING,
    "StopRequested": JobStatus.STOPPING,
    "JobStopped": JobStatus.STOPPED,
    "JobPaused": JobStatus.PAUSED,
    "JobCancelled": JobStatus.CANCELLED,
    "JobPreempted": JobStatus.QUEUED,
    "JobTimedOut": JobStatus.TIMED_OUT,
    "JobSucceeded": JobStatus.SUCCEEDED,
    "JobFailed": JobStatus.FAILED,
    "JobDeleted": JobStatus.DELETED,
}


def idempotent_command_id(key: str | None, scope: str) -> str | None:
    """A command id derived from an ``Idempotency-Key``, so a retry is the same command.

    The command handler answers a command id it has seen with the first outcome, so the
    retried request gets the first answer without the API remembering anything. ``scope``
    (the operation and its target) keeps one key from colliding across endpoints.
    """
    if key is None:
        return None
    caller = principal().key_id
    if caller is not None:  # two callers' keys never name the same command
        scope = f"{caller}\x00{scope}"
    digest = hashlib.sha256(f"{scope}\x00{key}".encode()).hexdigest()
    return f"idem-{digest[:40]}"


def status_after(event_types: Iterable[str]) -> JobStatus | None:
    status = None
    for name in event_types:
        status = STATUS_AFTER.get(name, status)
    return status


async def send(
    deps: ApiDeps,
    command: AnyCommand,
    *,
    command_id: str | None = None,
) -> CommandReply:
    """Send and raise the refusal as a domain error (``CommandUnavailable`` passes through).

    The caller's key id is the actor; a submitted job belongs to the key's owner (whatever
    the body said), within the owner's quota.
    """
    caller = principal()
    if isinstance(command, SubmitJob):
        command = msgspec.structs.replace(
            command, spec=msgspec.structs.replace(command.spec, owner=caller.owner)
        )
        if caller.owner is not None and deps.access is not None:
            await check_queued_quota(deps, caller.owner)
    reply = await deps.commands.send(
        command, command_id=command_id, actor=caller.actor or deps.actor
    )
    if reply.error is not None:
        raise SwiftTrainerError(reply.error.message, code=reply.error.code)
    if reply.events and deps.read_your_writes_s > 0:
        # Read-your-writes: a client that reads right after a write should see it. The wait
        # is bounded; a lagging read model costs freshness, never the answer.
        position = reply.events[-1].position
        if deps.wait_applied is not None:
            await deps.wait_applied(position, deps.read_your_writes_s)
        else:
            await caught_up(deps, position, deps.read_your_writes_s, poll_s=0.005)
    return reply


def reply_status(reply: CommandReply) -> JobStatus | None:
    return status_after(event.type for event in reply.events)


def job_id_of(reply: CommandReply, fallback: str) -> str:
    """The job a reply is about: a deduplicated retry answers for the first request's job."""
    if reply.stream_id is not None and reply.stream_id.startswith("job-"):
        return reply.stream_id.removeprefix("job-")
    return fallback


async def caught_up(
    deps: ApiDeps,
    position: int,
    timeout: float = 2.0,
    *,
    poll_s: float = 0.02,
) -> bool:
    """Wait (briefly) until the read model has applied ``position``; False if it has not.

    Only for answers that need a value the command's reply does not carry (an export's id);
    a lagging read model costs that detail, never the answer.
    """
    deadline = time.monotonic() + timeout
    while True:
        if await deps.read_model.applied_position() >= position:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll_s)
