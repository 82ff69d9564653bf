"""Jobs at rest (failed, stopped, paused): what a scheduler keeps to place them again, bounded.

A job at rest needs no placement until a user starts or resumes it, which the domain
records as a new ``JobQueued``. Keeping its whole state until then would make a scheduler's
memory grow with every job ever run, so ``SchedulerState`` moves it here, slimmed to what
placement and ``evolve`` of the coming events read (spec, priority, attempt, progress), and
this map keeps the most recent ``limit`` of them. A job evicted from it that comes back is
rebuilt from its recorded events (``job_history``, ``SchedulerState.restore``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

import msgspec

from swift_trainer.core.job import JobState, JobStatus

#: Statuses a job rests in that a user can leave again (start or resume: a new ``JobQueued``).
AT_REST: Final = frozenset(
    {JobStatus.FAILED, JobStatus.STOPPED, JobStatus.PAUSED, JobStatus.TIMED_OUT}
)
#: Jobs at rest kept by default: a few MiB, and more than a team restarts from memory.
DEFAULT_LIMIT: Final = 10_000


class DormantJobs:
    """Slimmed states of jobs at rest with their submission position, oldest evicted first."""

    __slots__ = ("_jobs", "evicted", "limit")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 0:
            raise ValueError(f"the limit of jobs at rest must be 0 or more, not {limit}")
        self.limit = limit
        self._jobs: OrderedDict[str, tuple[JobState, int]] = OrderedDict()
        #: How many jobs were let go to keep the bound (each is rebuilt if it comes back).
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def keep(self, state: JobState, seq: int) -> None:
        """Remember a job that came to rest; ``seq`` is its submission's position."""
        slim = msgspec.structs.replace(
            state, command=(), checkpoints=(), exports=(), stop_reason=None, failure_reason=None
        )
        self._jobs[state.job_id] = (slim, seq)
        self._jobs.move_to_end(state.job_id)
        while len(self._jobs) > self.limit:
            self._jobs.popitem(last=False)
            self.evicted += 1

    def entries(self) -> list[tuple[JobState, int]]:
        """Every job kept with its submission position, oldest first (for a checkpoint)."""
        return list(self._jobs.values())

    def peek(self, job_id: str) -> JobState | None:
        entry = self._jobs.get(job_id)
        return None if entry is None else entry[0]

    def take(self, job_id: str) -> tuple[JobState, int] | None:
        """The job's state and submission position, no longer kept here; None if unknown."""
        return self._jobs.pop(job_id, None)
