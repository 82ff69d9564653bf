"""The scheduler's command line: ``swift-trainer scheduler`` and ``python -m`` of this module.

Connects, provisions the streams and buckets, and runs one ``ObservedSchedulerService``
until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

from swift_trainer.bus.connection import connect, provision
from swift_trainer.core.settings import Settings, load_settings
from swift_trainer.core.shutdown import wait_for_shutdown
from swift_trainer.core.sqlstore import open_event_store
from swift_trainer.core.telemetry import setup_tracing

from .dormant_jobs import DEFAULT_LIMIT
from .observed_scheduler import ObservedSchedulerService
from .placement import DEFAULT_FOREIGN_MEMORY_THRESHOLD_MIB, PlacementPolicy


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
        "--max-jobs-at-rest",
        type=_count,
        default=DEFAULT_LIMIT,
        help="failed, stopped and paused jobs kept in memory for a quick restart; one let go "
        f"is read back from the event log when started again (default {DEFAULT_LIMIT})",
    )


async def run_scheduler(settings: Settings, args: argparse.Namespace) -> int:
    """One scheduler process against ``NATS_URL`` until SIGINT or SIGTERM (then exit 0).

    With ``EVENT_STORE_URL`` set, a newly elected leader checks it has applied everything
    the store holds before acting; without it, everything on the EVENTS stream.
    """
    url = getattr(args, "nats_url", None) or settings.nats_url
    if not url:
        print("scheduler needs NATS_URL (use 'up' for the embedded mode)", file=sys.stderr)  # noqa: T201
        return 2
    setup_tracing("swift-trainer-scheduler")
    nc = await connect(url, settings, name="swift-trainer-scheduler")
    store = None
    service: ObservedSchedulerService | None = None
    try:
        await provision(
            nc.jetstream(),
            scheduler_lease_s=args.lease_ttl,
            replicas=settings.nats_stream_replicas,
        )
        if settings.event_store_url:
            store = open_event_store(settings.event_store_url)
            await store.setup()
        service = ObservedSchedulerService(
            nc,
            scheduler_id=args.scheduler_id,
            policy=PlacementPolicy(
                backfill=not args.strict_fifo,
                foreign_memory_threshold_mib=args.foreign_memory_threshold_mib,
            ),
            lease_ttl_s=args.lease_ttl,
            tick_s=args.tick,
            store=store,
            command_timeout_s=settings.command_timeout_s,
            start_timeout_s=args.start_timeout,
            vanish_grace_s=args.vanished_grace,
            stream_replicas=settings.nats_stream_replicas,
            max_jobs_at_rest=args.max_jobs_at_rest,
        )
        await service.start()
        await wait_for_shutdown()
    finally:
        if service is not None:
            await service.stop()
        if store is not None:
            await store.close()
        with contextlib.suppress(Exception):
            await nc.drain()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m swift_trainer.projections.scheduler.scheduler_cli``: the scheduler alone, with
    the same options as ``swift-trainer scheduler`` (settings from the environment)."""
    parser = argparse.ArgumentParser(prog="swift-trainer-scheduler", description=__doc__)
    add_scheduler_arguments(parser)
    args = parser.parse_args(argv)
    settings = load_settings()
    logging.basicConfig(
        level=getattr(logging, settings.log_level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return asyncio.run(run_scheduler(settings, args))


if __name__ == "__main__":
    raise SystemExit(main())
