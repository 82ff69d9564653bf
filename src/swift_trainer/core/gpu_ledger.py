"""The GPU ledger: which job attempt holds which GPUs, as one aggregate with one stream.

Why it exists: ``ScheduleJob`` is decided on the job's own stream, so two schedulers (a
leader and a deposed one whose commands are still in flight) could each place a different
job on the same GPU and both appends would succeed; per-stream versions cannot order
decisions about two streams. The ledger is a single stream, so every claim is decided
against every other claim under optimistic concurrency, and the scheduler sends
``ClaimGpus`` first and ``ScheduleJob`` only once the claim is accepted.

Rules:

- A claim names ``(job_id, attempt)``, a runner and its GPU indices. It is refused with
  ``gpu_taken`` when any of those GPUs is held by another job's claim.
- Claiming exactly what the same job attempt already holds is a no-op (a retried or
  duplicated decision); the same attempt claiming other GPUs is refused.
- A job holds at most one claim. A claim for a later attempt supersedes the job's claim
  for an earlier one (that attempt must have ended for the job to be placed again); a
  claim for an earlier attempt than the one held is stale and refused.
- A multi-node job's claim names every rank (``peers``): all its GPUs on all its runners
  are claimed in one event, or the claim is refused as a whole. No partial gang exists.
- Releasing a claim that is not held (unknown job, other attempt) is a no-op, so releases
  can be retried and raced freely.

Both functions are pure; ``evolve`` accepts every event ``decide`` emits.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from . import commands as c
from . import events as e
from .errors import DomainError, GpuTaken, StaleAssignment
from .gang import RankPlacement


class Claim(msgspec.Struct, frozen=True):
    job_id: str
    attempt: int
    runner_id: str
    gpu_ids: tuple[int, ...]
    #: A multi-node job's ranks past rank 0.
    peers: tuple[RankPlacement, ...] = ()

    def same_gpus(
        self, runner_id: str, gpu_ids: tuple[int, ...], peers: tuple[RankPlacement, ...] = ()
    ) -> bool:
        return _held(self.runner_id, self.gpu_ids, self.peers) == _held(runner_id, gpu_ids, peers)

    def gpus(self) -> list[tuple[str, int]]:
        """Every ``(runner_id, gpu)`` the claim holds, rank 0 first."""
        return sorted(_held(self.runner_id, self.gpu_ids, self.peers))


def _held(
    runner_id: str, gpu_ids: tuple[int, ...], peers: tuple[RankPlacement, ...]
) -> frozenset[tuple[str, int]]:
    pairs = {(runner_id, gpu) for gpu in gpu_ids}
    for peer in peers:
        pairs.update((peer.runner_id, gpu) for gpu in peer.gpu_ids)
    return frozenset(pairs)


class LedgerState(msgspec.Struct, frozen=True):
    """Live claims by job id, and the holder of every claimed ``(runner_id, gpu)``."""

    claims: dict[str, Claim] = {}
    holders: dict[tuple[str, int], str] = {}
    version: int = 0

    def holder(self, runner_id: str, gpu: int) -> Claim | None:
        job_id = self.holders.get((runner_id, gpu))
        return None if job_id is None else self.claims[job_id]


def _check_shape(command: c.ClaimGpus) -> None:
    gpus = command.gpu_ids
    if not gpus or len(set(gpus)) != len(gpus) or min(gpus) < 0 or command.attempt < 1:
        raise DomainError(
            f"claim for job {command.job_id!r} must name distinct GPU indices and an attempt "
            f">= 1, got attempt {command.attempt} and GPUs {list(gpus)}",
            code="invalid_claim",
        )
    runners = [command.runner_id, *(peer.runner_id for peer in command.peers)]
    bad_peer = any(
        not peer.gpu_ids or len(set(peer.gpu_ids)) != len(peer.gpu_ids) or min(peer.gpu_ids) < 0
        for peer in command.peers
    )
    if len(set(runners)) != len(runners) or bad_peer:
        raise DomainError(
            f"claim for job {command.job_id!r} must put each rank on its own runner with "
            f"distinct GPU indices, got runners {runners}",
            code="invalid_claim",
        )


def decide_ledger(
    state: LedgerState,
    command: c.LedgerCommand,
    now: datetime,
) -> list[e.LedgerEvent]:
    """Refuse a claim that overlaps another job's GPUs; releases never fail."""
    match command:
        case c.ClaimGpus(job_id=job_id, attempt=attempt, runner_id=runner_id, gpu_ids=gpu_ids):
            _check_shape(command)
            peers = command.peers
            events: list[e.LedgerEvent] = []
            held = state.claims.get(job_id)
            if held is not None:
                if held.attempt == attempt:
                    if held.same_gpus(runner_id, gpu_ids, peers):
                        return []
                    raise GpuTaken(
                        f"attempt {attempt} of job {job_id!r} already holds GPUs "
                        f"{list(held.gpu_ids)} of runner {held.runner_id!r}; release them "
                        "before claiming others",
                    )
                if held.attempt > attempt:
                    raise StaleAssignment(
                        f"claim for attempt {attempt} of job {job_id!r}, which already holds "
                        f"GPUs for attempt {held.attempt}",
                    )
                events.append(
                    e.GpusReleased(
                        at=now,
                        job_id=job_id,
                        attempt=held.attempt,
                        runner_id=held.runner_id,
                        gpu_ids=held.gpu_ids,
                        reason=f"superseded by attempt {attempt}",
                        peers=held.peers,
                    ),
                )
            for host, gpu in sorted(_held(runner_id, gpu_ids, peers)):
                other = state.holder(host, gpu)
                if other is not None and other.job_id != job_id:
                    raise GpuTaken(
                        f"GPU {gpu} of runner {host!r} is held by attempt {other.attempt} "
                        f"of job {other.job_id!r}; place job {job_id!r} on other GPUs",
                    )
            events.append(
                e.GpusClaimed(
                    at=now,
                    job_id=job_id,
                    attempt=attempt,
                    runner_id=runner_id,
                    gpu_ids=gpu_ids,
                    peers=peers,
                ),
            )
            return events
        case c.ReleaseGpus(job_id=job_id, attempt=attempt, reason=reason):
            held = state.claims.get(job_id)
            if held is None or held.attempt != attempt:
                return []
            return [
                e.GpusReleased(
                    at=now,
                    job_id=job_id,
                    attempt=attempt,
                    runner_id=held.runner_id,
                    gpu_ids=held.gpu_ids,
                    reason=reason,
                    peers=held.peers,
                ),
            ]
    raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover


def _without(
    state: LedgerState, job_id: str
) -> tuple[dict[str, Claim], dict[tuple[str, int], str]]:
    claims = dict(state.claims)
    holders = dict(state.holders)
    old = claims.pop(job_id, None)
    if old is not None:
        for pair in old.gpus():
            if holders.get(pair) == job_id:
                del holders[pair]
    return claims, holders


def evolve_ledger(state: LedgerState, event: e.LedgerEvent) -> LedgerState:
    match event:
        case e.GpusClaimed(job_id=job_id, attempt=attempt, runner_id=runner_id, gpu_ids=gpus):
            claims, holders = _without(state, job_id)
            claim = Claim(job_id, attempt, runner_id, gpus, event.peers)
            claims[job_id] = claim
            for pair in claim.gpus():
                holders[pair] = job_id
            return LedgerState(claims, holders, state.version + 1)
        case e.GpusReleased(job_id=job_id, attempt=attempt):
            held = state.claims.get(job_id)
            if held is None or held.attempt != attempt:
                return LedgerState(state.claims, state.holders, state.version + 1)
            claims, holders = _without(state, job_id)
            return LedgerState(claims, holders, state.version + 1)
    raise AssertionError(f"unhandled event {event!r}")  # pragma: no cover


class LedgerSnapshot(msgspec.Struct, frozen=True, tag="LedgerSnapshot"):
    """The ledger's live claims at a version; ``holders`` is derived from them."""

    version: int
    claims: tuple[Claim, ...] = ()
    schema_version: int = 1


def encode_ledger(state: LedgerState) -> bytes:
    claims = tuple(sorted(state.claims.values(), key=lambda claim: claim.job_id))
    return msgspec.json.encode(LedgerSnapshot(version=state.version, claims=claims))


def decode_ledger(payload: bytes) -> LedgerState:
    """The state a snapshot holds; raises ``msgspec.DecodeError`` on a broken payload."""
    snapshot = msgspec.json.decode(payload, type=LedgerSnapshot)
    claims = {claim.job_id: claim for claim in snapshot.claims}
    holders = {pair: claim.job_id for claim in snapshot.claims for pair in claim.gpus()}
    return LedgerState(claims, holders, snapshot.version)


def replay_ledger(events: list[e.LedgerEvent]) -> LedgerState:
    state = LedgerState()
    for event in events:
        state = evolve_ledger(state, event)
    return state
