"""The answer to "process the queue now", the same struct in process, over NATS and in HTTP.

``POST /api/v1/training/queue/process`` returns it as is, so its fields are the OpenAPI schema
and the NATS reply format of ``process_requests.PROCESS_SUBJECT`` at once.
"""

from __future__ import annotations

import msgspec


class PlacedJob(msgspec.Struct, frozen=True):
    """A job this pass started: its attempt, runner and GPU indices."""

    job_id: str
    attempt: int
    runner_id: str
    gpu_ids: tuple[int, ...]


class UnplaceableJob(msgspec.Struct, frozen=True):
    """A queued job no live runner can ever take, and why."""

    job_id: str
    reason: str


class PassResult(msgspec.Struct, frozen=True, kw_only=True):
    """The reply to a process request.

    ``processed`` is false when this instance does not lead (``leader`` names who does,
    when known) or is still catching up (``reason`` says which).
    """

    processed: bool
    leader: str | None
    placed: tuple[PlacedJob, ...] = ()
    paused: bool = False
    queued: int = 0
    unplaceable: tuple[UnplaceableJob, ...] = ()
    reason: str | None = None


def not_processed(reason: str, leader: str | None = None) -> PassResult:
    """A reply that did nothing, and why."""
    return PassResult(processed=False, leader=leader, reason=reason)
