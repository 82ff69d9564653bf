"""The scheduler's command-line options: ``swift-trainer scheduler`` parses them here, and
``service.py`` (the composition root) builds and runs the service from them."""

from __future__ import annotations

import argparse

from ..projections.scheduler.dormant_jobs import DEFAULT_LIMIT
from ..projections.scheduler.placement import DEFAULT_FOREIGN_MEMORY_THRESHOLD_MIB
from ..projections.scheduler.service import SchedulerOptions


def _count(text: str) -> int:
    """An argparse type: a whole number, 0 or more (argparse turns the error into usage)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def add_scheduler_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats-url", help="NATS server (default NATS_URL)")
    parser.add_argument("--scheduler-id", help="name of this instance (default: host-pid-random)")
    parser.add_argument(
        "--lease-ttl",
        type=float,
        default=5.0,
        help="leader lease TTL in seconds, used when the lease bucket is created (default 5)",
    )
    parser.add_argument(
        "--tick", type=float, default=1.0, help="seconds between timer passes (default 1)"
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=60.0,
        help="seconds a scheduled job may wait for its runner's start report before it is "
        "marked lost and requeued (default 60)",
    )
    parser.add_argument(
        "--vanished-grace",
        type=float,
        default=10.0,
        help="seconds a running job may be missing from its runner's heartbeats before it is "
        "marked lost and requeued (default 10)",
    )
    parser.add_argument(
        "--strict-fifo",
        action="store_true",
        help="never start a job ahead of a blocked higher-ranked one (no backfill)",
    )
    parser.add_argument(
        "--foreign-memory-threshold-mib",
        type=int,
        default=DEFAULT_FOREIGN_MEMORY_THRESHOLD_MIB,
        help="a GPU with this much memory used by processes we did not start counts as busy",
    )
    parser.add_argument(
        "--preemption",
        choices=("on", "off"),
        help="let urgent jobs preempt lower-priority ones (default SCHEDULER_PREEMPTION or on)",
    )
    parser.add_argument(
        "--gang-start-timeout",
        type=float,
        default=300.0,
        help="seconds every rank of a multi-node job has to start; past it, all its ranks "
        "are stopped and the job is queued again (default 300)",
    )
    parser.add_argument(
        "--max-jobs-at-rest",
        type=_count,
        default=DEFAULT_LIMIT,
        help="failed, stopped and paused jobs kept in memory for a quick restart; one let go "
        f"is read back from the event log when started again (default {DEFAULT_LIMIT})",
    )


def scheduler_options(args: argparse.Namespace) -> SchedulerOptions:
    return SchedulerOptions(
        scheduler_id=args.scheduler_id,
        lease_ttl_s=args.lease_ttl,
        tick_s=args.tick,
        start_timeout_s=args.start_timeout,
        vanish_grace_s=args.vanished_grace,
        gang_start_timeout_s=args.gang_start_timeout,
        backfill=not args.strict_fifo,
        foreign_memory_threshold_mib=args.foreign_memory_threshold_mib,
        max_jobs_at_rest=args.max_jobs_at_rest,
    )
