"""The scheduler's pure placement core: priority queue, GPU inventory, placement, estimates.

No I/O and no clock: the service shell feeds it events and runner reports and turns its
decisions into commands. The policy is documented in ``placement``.
"""

from .estimate import QueueEntry, estimate_waits
from .inventory import GpuSnapshot, HostSnapshot, RunningJob, live_hosts
from .occupancy import Occupancy, select_gpus
from .placement import (
    Decision,
    PlacementPolicy,
    Reservation,
    Unplaceable,
    place_pass,
    unplaceable_reason,
)
from .queue import JobQueue, QueuedJob
from .scheduler import Placement, PlacementPass, Scheduler, place_jobs

__all__ = [
    "Decision",
    "GpuSnapshot",
    "HostSnapshot",
    "JobQueue",
    "Occupancy",
    "Placement",
    "PlacementPass",
    "PlacementPolicy",
    "QueueEntry",
    "QueuedJob",
    "Reservation",
    "RunningJob",
    "Scheduler",
    "Unplaceable",
    "estimate_waits",
    "live_hosts",
    "place_jobs",
    "place_pass",
    "select_gpus",
    "unplaceable_reason",
]
