"""Which waiting jobs to queue or cancel: the event-derived state of job dependencies.

A fold of the job events, nothing more: each job's outcome and the jobs that wait. What it
asks for is a pure function of that state (``core.dependencies.verdict``), so a restarted
releaser that folds the log again asks for the same commands, under the same command ids,
and the handler answers a repeat with the first outcome.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.dependencies import Broken, Met, Outcome, verdict
from swift_trainer.core.spec import Dependency


class WaitingJob(msgspec.Struct, frozen=True):
    """A job in status ``waiting``: its conditions and the stream version that began the wait."""

    job_id: str
    after: tuple[Dependency, ...]
    since_version: int


class Action(msgspec.Struct, frozen=True):
    """A command to send, under a command id derived from the wait it ends."""

    command: c.ReleaseWaitingJob | c.CancelJob
    command_id: str


class DependencyState:
    """Each job's outcome, each job's spec conditions and the jobs that wait now."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Outcome] = {}
        self.after: dict[str, tuple[Dependency, ...]] = {}
        self.waiting: dict[str, WaitingJob] = {}

    def apply(self, event: e.AnyEvent, version: int) -> bool:
        """Fold one job event; True when it may change a verdict."""
        if not isinstance(event, e.JobEvent):
            return False
        job_id = event.job_id
        match event:
            case e.JobSubmitted(spec=spec):
                self.outcomes.pop(job_id, None)
                self.after[job_id] = spec.after
                return True
            case e.JobWaiting():
                self.waiting[job_id] = WaitingJob(job_id, self.after.get(job_id, ()), version)
                return True
            case e.JobQueued() | e.JobHeld():
                self.outcomes.pop(job_id, None)
                self.waiting.pop(job_id, None)
                return False
            case e.JobSucceeded():
                return self._ended(job_id, "succeeded")
            case e.JobFailed():
                return self._ended(job_id, "failed")
            case e.JobCancelled():
                return self._ended(job_id, "cancelled")
            case e.JobStopped() | e.JobPaused():
                self.waiting.pop(job_id, None)
                return False
            case e.JobDeleted():
                self.after.pop(job_id, None)
                return self._ended(job_id, "deleted")
        return False

    def _ended(self, job_id: str, outcome: Outcome) -> bool:
        self.outcomes[job_id] = outcome
        self.waiting.pop(job_id, None)
        return True

    def actions(self) -> list[Action]:
        """The release or cancel each waiting job's conditions call for now."""
        found: list[Action] = []
        for job in self.waiting.values():
            result = verdict(job.after, self.outcomes)
            if isinstance(result, Met):
                found.append(
                    Action(
                        c.ReleaseWaitingJob(job_id=job.job_id),
                        f"release-{job.job_id}-{job.since_version}",
                    )
                )
            elif isinstance(result, Broken):
                found.append(
                    Action(
                        c.CancelJob(job_id=job.job_id, reason=result.reason),
                        f"unmet-{job.job_id}-{job.since_version}",
                    )
                )
        return found

    def waiting_on(self, job_ids: Iterable[str]) -> list[str]:
        """The waiting jobs that name any of ``job_ids`` (for tests and diagnostics)."""
        wanted = set(job_ids)
        return [j.job_id for j in self.waiting.values() if any(d.job in wanted for d in j.after)]
