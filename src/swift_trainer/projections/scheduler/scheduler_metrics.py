"""Prometheus instruments of the scheduler: passes, leadership, queue length and wait, losses.

Defined here, apart from the scheduler's logic; ``observed_scheduler`` counts with them.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

PLACEMENT_SECONDS: Final = Histogram(
    "swift_trainer_placement_pass_duration_seconds",
    "Time one leading scheduler pass took (lost-runner check, placement, queue view).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
LEADER: Final = Gauge(
    "swift_trainer_scheduler_leader",
    "1 while this scheduler holds the leader lease, else 0.",
)
QUEUE_LENGTH: Final = Gauge(
    "swift_trainer_queue_length",
    "Jobs waiting for GPUs, as the leading scheduler last counted them.",
)
QUEUE_WAIT_SECONDS: Final = Histogram(
    "swift_trainer_queue_wait_seconds",
    "Time from a job entering the queue (submitted, released, resumed or requeued) to its "
    "training process starting.",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
JOBS_LOST: Final = Counter(
    "swift_trainer_jobs_lost",
    "Jobs marked lost because their runner stopped heartbeating.",
)
JOBS_PREEMPTED: Final = Counter(
    "swift_trainer_jobs_preempted",
    "Jobs stopped with a checkpoint and queued again to make room for a job of higher priority.",
)
JOBS_TIMED_OUT: Final = Counter(
    "swift_trainer_jobs_timed_out",
    "Jobs stopped with a checkpoint at their max_runtime.",
)
JOBS_REQUEUED: Final = Counter(
    "swift_trainer_jobs_requeued",
    "Jobs put back in the queue after a loss or a refused start.",
)
