"""The scheduler: a projection of the event log that places queued jobs on GPUs.

The pure placement core (no I/O, no clock) is re-exported here: ``gpu_snapshots`` (what the
runners report), ``gpu_choice`` (which GPUs a job may use and gets), ``job_queue``,
``occupancy``, ``owner_usage`` (GPUs in use and quotas per owner), ``placement`` (the
policy), ``wait_estimate`` and ``placement_core`` (the
incremental ``Scheduler``). Around it: ``scheduler_state`` (the projection),
``scheduler_service`` (the pass loop), ``process_requests`` and ``pass_result`` (process the
queue now), ``leader_lease``, ``observed_scheduler`` (metrics and traces) and
``scheduler_cli``. See docs/architecture.md.
"""

from .gpu_choice import select_gpus
from .gpu_snapshots import GpuSnapshot, HostSnapshot, RunningJob, live_hosts
from .job_queue import JobQueue, QueuedJob
from .occupancy import Occupancy
from .owner_usage import OWNER_GPU_QUOTA, OwnerUsage
from .placement import (
    Decision,
    PlacementPolicy,
    Reservation,
    Unplaceable,
    place_pass,
    unplaceable_reason,
)
from .placement_core import Placement, PlacementPass, Scheduler, place_jobs
from .wait_estimate import QueueSlot, estimate_waits

__all__ = [
    "OWNER_GPU_QUOTA",
    "Decision",
    "GpuSnapshot",
    "HostSnapshot",
    "JobQueue",
    "Occupancy",
    "OwnerUsage",
    "Placement",
    "PlacementPass",
    "PlacementPolicy",
    "QueueSlot",
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
