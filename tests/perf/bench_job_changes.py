"""What the jobs list's change feed (``GET /jobs?follow=true``) costs, next to no feed at all.

    uv run python tests/perf/bench_job_changes.py [--jobs 50] [--reports 2000] [--feeds 10]

The real stack of the API tests (nats-server, SQLite store, handler, relay, in-memory read
model) with N running jobs. A burst of progress reports (as runners send them, 20 in
flight) is timed twice in the same run: with no feed open (the baseline), then with
``--feeds`` feeds open as an admin's dashboard opens them. Printed: the burst's wall time
and this process's CPU time for each, their ratio, how many messages each feed sent for
the burst (coalescing: far fewer than the reports), and how long after the last report
the last feed showed its final step.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.api.conftest import Stack, running_stack

from swift_trainer.api.auth.principal import Principal
from swift_trainer.api.jobs.changes import follow_job_changes
from swift_trainer.core import commands as c
from swift_trainer.projections.read_models import MemoryReadModel

IN_FLIGHT = 20


async def burst(stack: Stack, jobs: list[str], reports: int, first_step: int) -> float:
    """Send ``reports`` progress reports round-robin over ``jobs``; returns the wall time."""
    steps = {job: first_step for job in jobs}
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def report(n: int) -> None:
        job = jobs[n % len(jobs)]
        steps[job] += 1
        command = c.ReportProgress(
            job_id=job,
            attempt=1,
            runner_id="runner-1",
            step=steps[job],
            max_steps=100_000,
            loss=1.0,
        )
        async with gate:
            reply = await stack.commands.send(command)
        assert reply.ok, reply

    start = time.perf_counter()
    await asyncio.gather(*(report(n) for n in range(reports)))
    await stack.settled()
    return time.perf_counter() - start


async def drain(feed: AsyncIterator[Any], seen: dict[str, Any]) -> None:
    async for message in feed:
        if message.event is None and message.data:
            seen["messages"] += 1
            for job in msgspec.json.decode(str(message.data))["jobs"]:
                if job["progress"] is not None:
                    seen["steps"][job["job_id"]] = job["progress"]["step"]
            seen["at"] = time.perf_counter()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--reports", type=int, default=2000)
    parser.add_argument("--feeds", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        async with running_stack(Path(folder), MemoryReadModel()) as (stack, _):
            jobs = [f"bench-{n:03d}" for n in range(args.jobs)]
            for job in jobs:
                await stack.create(job_id=job)
                await stack.start(job)
            await burst(stack, jobs, args.reports // 4, 0)  # warm-up

            cpu = time.process_time()
            bare_wall = await burst(stack, jobs, args.reports, 10_000)
            bare_cpu = time.process_time() - cpu

            admin = Principal(role="admin")
            feeds = [follow_job_changes(stack.deps, admin, owner=None) for _ in range(args.feeds)]
            for feed in feeds:
                assert (await anext(feed)).event == "ready"
            seen = [{"messages": 0, "steps": {}, "at": 0.0} for _ in feeds]
            readers = [asyncio.create_task(drain(f, s)) for f, s in zip(feeds, seen, strict=True)]
            cpu = time.process_time()
            fed_wall = await burst(stack, jobs, args.reports, 20_000)
            sent_at = time.perf_counter()
            final = {job: 20_000 + args.reports // args.jobs for job in jobs}
            deadline = time.monotonic() + 30
            done = lambda: all(s["steps"] == final for s in seen)  # noqa: E731
            while not done() and time.monotonic() < deadline:  # noqa: ASYNC110 - no event to await
                await asyncio.sleep(0.01)
            fed_cpu = time.process_time() - cpu
            complete = done()
            lag_ms = max(0.0, (max(s["at"] for s in seen) - sent_at) * 1000)
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            for feed in feeds:
                await feed.aclose()

    messages = [s["messages"] for s in seen]
    print(f"{args.reports} progress reports over {args.jobs} running jobs, {IN_FLIGHT} in flight")
    print(f"  baseline, no feed open:  {bare_wall:6.2f} s wall, {bare_cpu:6.2f} s CPU")
    print(
        f"  with {args.feeds} feeds open:     {fed_wall:6.2f} s wall, {fed_cpu:6.2f} s CPU  "
        f"({fed_wall / bare_wall:.2f}x wall, {fed_cpu / bare_cpu:.2f}x CPU)"
    )
    print(
        f"  messages per feed: {min(messages)}-{max(messages)} for {args.reports} reports; "
        f"every feed showed every job's final step: {complete}, the last within "
        f"{lag_ms:.0f} ms of the burst being applied"
    )


if __name__ == "__main__":
    asyncio.run(main())
