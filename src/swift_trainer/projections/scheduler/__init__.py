"""The scheduler: a projection of the event log that places queued jobs on GPUs.

The pure placement core is re-exported here; docs/architecture.md maps the modules.
"""

from .gpu_choice import select_gpus
from .gpu_snapshots import GpuSnapshot, HostSnapshot, RunningJob, live_hosts
from .job_queue import JobQueue, QueuedJob
from .occupancy import Occupancy
from .owner_usage import OWNER_GPU_QUOTA, OwnerUsage
from .placement import (
    Decision,
    PlacementPass,
    PlacementPolicy,
    Reservation,
    Unplaceable,
    place_pass,
    unplaceable_reason,
)
from .placement_core import PlacementCore, place_jobs
from .wait_estimate import QueueSlot, estimate_waits

__all__ = [
    "OWNER_GPU_QUOTA",
    "Decision",
    "GpuSnapshot",
    "HostSnapshot",
    "JobQueue",
    "Occupancy",
    "OwnerUsage",
    "PlacementCore",
    "PlacementPass",
    "PlacementPolicy",
    "QueueSlot",
    "QueuedJob",
    "Reservation",
    "RunningJob",
    "Unplaceable",
    "estimate_waits",
    "live_hosts",
    "place_jobs",
    "place_pass",
    "select_gpus",
    "unplaceable_reason",
]
