"""What a leading scheduler sends: claims and placements, losses, claim repairs.

Every command goes through ``send``, which logs a refusal or a failure and never raises, so
no refused command stops a pass; the next pass tries again. An action already sent is not
sent again within ``retry_s`` (``_due``), so a slow handler is not flooded. Each action
checks ``leading`` just before it is sent: leadership can end in the middle of a pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime

from swift_trainer.bus.command_client import CommandClient
from swift_trainer.bus.messages import CommandReply
from swift_trainer.core import commands as c

from .job_watch import WatchLimits, health_actions, job_actions, track_idle
from .placement import Decision
from .preemption import PreemptionPlan
from .state import SchedulerState

_log = logging.getLogger(__name__)


class LeaderActions:
    """The commands of one scheduler instance, sent only while ``leading()`` says so.

    ``start_timeout_s`` and ``vanish_grace_s`` are the healing rules' bounds (see
    ``SchedulerState.overdue_starts`` and ``vanished``).
    """

    def __init__(
        self,
        client: CommandClient,
        state: SchedulerState,
        *,
        leading: Callable[[], bool],
        retry_s: float,
        start_timeout_s: float,
        vanish_grace_s: float,
        watch_limits: WatchLimits | None = None,
        gang_start_timeout_s: float = 300.0,
    ) -> None:
        self.client = client
        self.state = state
        self.leading = leading
        self.retry_s = retry_s
        self.start_timeout_s = start_timeout_s
        self.vanish_grace_s = vanish_grace_s
        #: How long every rank of a multi-node job has to report its start.
        self.gang_start_timeout_s = gang_start_timeout_s
        self._recent: dict[tuple[str, str, int], float] = {}
        self.watch_limits = watch_limits or WatchLimits()
        #: When each running attempt's GPUs went idle, per this instance's heartbeats.
        self.idle_since: dict[tuple[str, int], datetime] = {}

    async def send(self, command: c.AnyCommand) -> CommandReply | None:
        """Send; returns the reply when accepted, else logs why and returns None."""
        try:
            reply = await self.client.send(command)
        except Exception as exc:
            _log.warning("could not send %s: %r", type(command).__name__, exc)
            return None
        if reply.ok:
            return reply
        assert reply.error is not None
        _log.info(
            "%s for job %s refused: %s: %s",
            type(command).__name__,
            getattr(command, "job_id", "-"),
            reply.error.code,
            reply.error.message,
        )
        return None

    async def execute(self, decision: Decision) -> bool:
        """Claim, then schedule; the job's placement stays as decided until its events
        come back (or is undone at once when a step is refused or fails)."""
        until: int | None = None
        try:
            if not self.leading():
                return False
            if await self.send(decision.claim_command()) is None:
                return False
            reply = await self.send(decision.to_command())
            if reply is None:
                return False
            until = max((x.position for x in reply.events), default=None)
            _log.info(
                "placed job %s (attempt %d) on %s GPUs %s",
                decision.job_id,
                decision.attempt,
                decision.runner_id,
                list(decision.gpu_ids),
            )
            return True
        finally:
            self.state.settle(decision.job_id, until)

    def _due(self, key: tuple[str, str, int]) -> bool:
        """Whether an action may be sent (again): not within the retry interval."""
        now = time.monotonic()
        sent = self._recent.get(key)
        if sent is not None and now - sent < self.retry_s:
            return False
        self._recent[key] = now
        return True

    def forget_old_actions(self) -> None:
        horizon = time.monotonic() - self.retry_s
        for key in [k for k, sent in self._recent.items() if sent < horizon]:
            del self._recent[key]

    async def mark_lost(self, now: datetime) -> None:
        """End the attempts the healing rules find dead, each with its reason: the runner
        stopped heartbeating, never reported the start, or no longer runs the process."""
        state = self.state
        found = [
            *state.lost_jobs(now),
            *state.overdue_starts(now, self.start_timeout_s),
            *state.vanished(now, self.vanish_grace_s),
            *state.gang_overdue(now, self.gang_start_timeout_s),
        ]
        for lost in found:
            if not self._due(("lost", lost.job_id, lost.attempt)) or not self.leading():
                continue
            _log.warning(
                "marking job %s (attempt %d) lost: %s", lost.job_id, lost.attempt, lost.reason
            )
            command = c.MarkLost(job_id=lost.job_id, attempt=lost.attempt, reason=lost.reason)
            reply = await self.send(command)
            if reply is not None and any(x.type == "JobLost" for x in reply.events):
                # The attempt has ended for good: its GPUs can be let go at once.
                await self.send(
                    c.ReleaseGpus(
                        job_id=lost.job_id, attempt=lost.attempt, reason="the job was lost"
                    )
                )

    async def watch(self, now: datetime) -> None:
        """Record GPU health changes; requeue, flag or stop jobs as ``job_watch`` says."""
        state = self.state
        beats = {runner_id: beat for runner_id, (beat, _) in state.heartbeats.items()}
        limits = self.watch_limits
        active = state.active_jobs()
        track_idle(self.idle_since, active, beats, now, limits.idle_util_pct)
        actions = [
            *health_actions(state.fleet, beats),
            *job_actions(active, state.fleet, now, limits, self.idle_since),
        ]
        for action in actions:
            if not self._due(action.key) or not self.leading():
                continue
            _log.warning("%s: %s", type(action.command).__name__, action.command)
            await self.send(action.command)

    async def reconcile_claims(self) -> None:
        """Release the claims no live attempt holds and complete the half-made ones.

        Sent together, as a pass's decisions are: every finished job leaves a claim to
        release, and waiting for each release in turn held the pass (and every decision
        behind it) for seconds while a busy queue drained.
        """
        state = self.state
        commands: list[c.ReleaseGpus | c.ScheduleJob] = []
        for action in state.reconcile():
            claim = action.claim
            key = (action.kind, claim.job_id, claim.attempt)
            if action.kind == "complete" and state.paused:
                continue
            if not self._due(key) or not self.leading():
                continue
            if action.kind == "release":
                _log.info(
                    "releasing GPUs %s of %s claimed by job %s attempt %d: %s",
                    list(claim.gpu_ids),
                    claim.runner_id,
                    claim.job_id,
                    claim.attempt,
                    action.reason,
                )
                commands.append(
                    c.ReleaseGpus(job_id=claim.job_id, attempt=claim.attempt, reason=action.reason)
                )
            else:
                _log.info(
                    "completing the claim of job %s attempt %d on %s GPUs %s",
                    claim.job_id,
                    claim.attempt,
                    claim.runner_id,
                    list(claim.gpu_ids),
                )
                commands.append(
                    c.ScheduleJob(
                        job_id=claim.job_id,
                        attempt=claim.attempt,
                        runner_id=claim.runner_id,
                        gpu_ids=claim.gpu_ids,
                        gpu_uuids=state.gpu_uuids(claim.runner_id, claim.gpu_ids),
                        peers=claim.peers,
                    )
                )
        await asyncio.gather(*(self.send(command) for command in commands))

    async def preempt(self, plans: tuple[PreemptionPlan, ...]) -> None:
        """Ask each victim of each new plan to stop with a checkpoint, within its grace."""
        for plan in plans:
            for victim in plan.victims:
                key = ("preempt", victim.job_id, victim.attempt)
                if not self._due(key) or not self.leading():
                    continue
                reason = plan.reason(victim)
                _log.info(
                    "preempting job %s (attempt %d): %s", victim.job_id, victim.attempt, reason
                )
                await self.send(
                    c.PreemptJob(
                        job_id=victim.job_id,
                        attempt=victim.attempt,
                        preempted_by=plan.job_id,
                        reason=reason,
                        grace_s=victim.grace_s,
                        reserved_gpu_ids=plan.gpus_on(victim.runner_id or plan.runner_id),
                    )
                )

    async def time_out(self, now: datetime) -> None:
        """Stop, with a checkpoint, every running job that reached its ``max_runtime``."""
        for limit in self.state.time_limits(now):
            if not self._due(("timeout", limit.job_id, limit.attempt)) or not self.leading():
                continue
            _log.info("job %s (attempt %d) %s", limit.job_id, limit.attempt, limit.reason)
            await self.send(
                c.TimeOutJob(job_id=limit.job_id, attempt=limit.attempt, reason=limit.reason)
            )
