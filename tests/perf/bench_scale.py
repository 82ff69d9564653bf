"""The service at the size a busy team reaches: a PostgreSQL store full of jobs.

    uv run python tests/perf/bench_scale.py [--jobs 100000] [--queued 3000] [--requests 200]
        [--database NAME [--keep]]

Fills a throwaway PostgreSQL database (``BENCH_POSTGRES_URL``'s server, default
127.0.0.1:5432 as ``postgres``) with ``--jobs`` job streams written straight into the store
in batches, not through the API: each job's events come from the real aggregate
(``core.job.decide``/``evolve``), about ten per job (submitted, queued, scheduled, started,
progress reports, checkpoints, then succeeded or failed; the last ``--queued`` jobs stay
queued). ``--database`` names the database instead (created and filled when it is empty,
kept with ``--keep``), so a filled store can be measured again. Then, against Redis
(``BENCH_REDIS_URL``, a throwaway prefix) and an embedded nats-server, it starts each
component as its own process and prints each figure next to its goal (issue 16):

- ``projections rebuild``: events per second (goal >= 50k/s), and its peak RSS;
- ``handler``: cold start until it answers a job-state query on NATS (< 10 s), the rate
  at which its relay fills the empty EVENTS stream with the whole store (JetStream without
  an fsync per message here, see ``UnsyncedNatsServer``), and its RSS;
- ``scheduler``: cold start until it publishes a queue view computed at the store's head
  (< 10 s), first with no checkpoint (it folds the whole store), then again from the
  checkpoint the first one saved when it stopped; its RSS (< 500 MiB);
- ``api``: cold start to ``/health/ready`` (< 10 s), p50 latency of ``GET /jobs`` first page,
  a deep cursor page, and one job's status, events and logs (< 20 ms each), and its RSS;
- ``up`` (every part in one process, on the same store, Redis and NATS): cold start to
  ``/health/ready`` and to its scheduler's first view at the head, and its RSS.

The scheduler's pass at 10k queued over 1,000 GPUs is measured by ``bench_placement.py``.
Everything it starts is stopped and everything it creates (database, Redis keys) is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import msgspec
import nats
import redis
from perf_processes import Component, UnsyncedNatsServer, http_ready
from sqlalchemy import make_url

from swift_trainer.bus import subjects
from swift_trainer.bus.embedded import free_port
from swift_trainer.bus.messages import JobStateAnswer, JobStateQuery, encode
from swift_trainer.core import commands as c
from swift_trainer.core import job as domain
from swift_trainer.core.events import encode_event, event_type
from swift_trainer.core.ids import new_id
from swift_trainer.core.spec import decode_spec
from swift_trainer.core.sqlstore import open_event_store
from swift_trainer.core.store import NO_STREAM, EventMetadata, NewEvent
from swift_trainer.projections.scheduler.state_checkpoint import CHECKPOINT_STREAM

PG_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
API = "/api/v1/training"
#: Concurrent appends while filling (PostgreSQL overlaps their round trips).
FILL_CONCURRENCY = 16
SPEC = decode_spec(
    {"data_path": "AI-ModelScope/coco#20000", "model_path": "Qwen/Qwen2.5-7B", "output_dir": "out"}
)


def job_events(index: int, queued_only: bool) -> tuple[str, list[NewEvent]]:
    """One job's whole history, decided and folded by the real aggregate."""
    job_id = f"scale-{index:07d}"
    now = datetime.now(UTC)
    state = domain.initial_state(job_id)
    commands: list[c.AnyJobCommand] = [c.SubmitJob(job_id=job_id, spec=SPEC)]
    if not queued_only:
        runner = f"runner-{index % 125:03d}"
        commands += [
            c.ScheduleJob(job_id=job_id, attempt=1, runner_id=runner, gpu_ids=(index % 8,)),
            c.ReportStarted(job_id=job_id, attempt=1, runner_id=runner, pid=1000, command=("x",)),
            *(
                c.ReportProgress(
                    job_id=job_id,
                    attempt=1,
                    runner_id=runner,
                    step=step,
                    max_steps=500,
                    loss=2.0 / step,
                )
                for step in (100, 200, 300, 400)
            ),
            c.ReportCheckpoint(
                job_id=job_id, attempt=1, runner_id=runner, step=400, path="out/ckpt-400"
            ),
            c.ReportFailed(job_id=job_id, attempt=1, runner_id=runner, exit_code=1, reason="oom")
            if index % 10 == 0
            else c.ReportSucceeded(job_id=job_id, attempt=1, runner_id=runner, final_step=500),
        ]
    metadata = EventMetadata(command_id=new_id(), correlation_id="bench", causation_id="bench")
    out: list[NewEvent] = []
    for command in commands:
        for event in domain.decide(state, command, now):
            state = domain.evolve(state, event)
            out.append(
                NewEvent(
                    event_id=new_id(),
                    type=event_type(event),
                    payload=encode_event(event),
                    schema_version=type(event).schema_version,
                    metadata=metadata,
                )
            )
    return f"job-{job_id}", out


async def fill(url: str, jobs: int, queued: int) -> tuple[int, float]:
    store = open_event_store(url, append_connections=FILL_CONCURRENCY)
    await store.setup()
    total = 0
    started = time.perf_counter()
    try:
        next_index = 0

        async def worker() -> None:
            nonlocal next_index, total
            while next_index < jobs:
                index, next_index = next_index, next_index + 1
                stream, events = job_events(index, queued_only=index >= jobs - queued)
                await store.append(stream, events, expected_version=NO_STREAM)
                total += len(events)
                if index % 10_000 == 0:
                    print(f"  filled {index} jobs", flush=True)

        await asyncio.gather(*(worker() for _ in range(FILL_CONCURRENCY)))
    finally:
        await store.close()
    return total, time.perf_counter() - started


def _dsn(database: str) -> str:
    url = make_url(PG_URL).set(drivername="postgresql", database=database)
    return url.render_as_string(hide_password=False)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(_dsn(make_url(PG_URL).database or "postgres"), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _exists(name: str) -> bool:
    conn = await asyncpg.connect(_dsn(make_url(PG_URL).database or "postgres"), timeout=5)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


async def _stored(url: str) -> tuple[int, int]:
    """How many events the store holds, and the last position (0, 0 before setup)."""
    conn = await asyncpg.connect(_dsn(make_url(url).database or ""), timeout=5)
    try:
        if not await conn.fetchval("SELECT to_regclass('events') IS NOT NULL"):
            return 0, 0
        row = await conn.fetchrow("SELECT count(*), coalesce(max(position), 0) FROM events")
        assert row is not None
        return int(row[0]), int(row[1])
    finally:
        await conn.close()


async def _forget_checkpoint(url: str) -> None:
    """A store this bench filled before may hold a scheduler checkpoint: start without."""
    conn = await asyncpg.connect(_dsn(make_url(url).database or ""), timeout=5)
    try:
        await conn.execute("DELETE FROM snapshots WHERE stream_id = $1", CHECKPOINT_STREAM)
    finally:
        await conn.close()


@contextmanager
def database(name: str | None, *, keep: bool) -> Iterator[str]:
    name = name or f"bench_scale_{uuid.uuid4().hex[:10]}"
    if not asyncio.run(_exists(name)):
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        if not keep:
            asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def p50_ms(client: httpx.Client, path: str, requests: int) -> float:
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
    return statistics.median(times)


def verdict(value: float, goal: float, *, below: bool = True) -> str:
    met = value < goal if below else value >= goal
    return "met" if met else "NOT met"


def run_measured(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run a command to its end: (seconds, peak RSS in MiB) from the kernel's accounting."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "swift_trainer.cli", *args], env=env, stdout=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited with {process.returncode}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


class Bus:
    """The bench's own NATS connection, on the loop that runs the embedded server."""

    def __init__(self, loop: asyncio.AbstractEventLoop, url: str) -> None:
        self.loop = loop
        self.nc = loop.run_until_complete(nats.connect(url))

    def answers_job_state(self, job_id: str) -> bool:
        async def ask() -> bool:
            try:
                msg = await self.nc.request(
                    subjects.JOB_STATE_QUERY, encode(JobStateQuery(job_id=job_id)), timeout=0.5
                )
            except (TimeoutError, nats.errors.Error):
                return False
            return msgspec.json.decode(msg.data, type=JobStateAnswer).error is None

        return self.loop.run_until_complete(ask())

    def events_in_stream(self) -> int:
        async def count() -> int:
            try:
                info = await self.nc.jetstream().stream_info(subjects.EVENTS_STREAM)
            except nats.js.errors.NotFoundError:
                return 0
            return int(info.state.messages)

        return self.loop.run_until_complete(count())

    def close(self) -> None:
        self.loop.run_until_complete(self.nc.close())


class _View(msgspec.Struct):
    as_of_position: int = 0


def view_at(keys: redis.Redis, prefix: str, position: int) -> Callable[[], bool]:
    """Ready when the scheduler's queue view in Redis was computed at ``position``."""

    def ready() -> bool:
        raw = keys.get(prefix + "feed:queue")
        return raw is not None and msgspec.json.decode(raw, type=_View).as_of_position >= position

    return ready


def measure_api(
    client: httpx.Client, rows: list[tuple[str, str, str, str]], args: argparse.Namespace
) -> None:
    first = client.get("/jobs", params={"limit": 50}).json()
    cursor = first.get("next_cursor")
    for _ in range(args.deep_pages):
        if cursor is None:
            break
        page = client.get("/jobs", params={"limit": 50, "cursor": cursor}).json()
        cursor = page.get("next_cursor") or cursor
    job = "scale-0000001"
    latencies = {
        "GET /jobs first page": "/jobs?limit=50",
        f"GET /jobs page {args.deep_pages + 1}": f"/jobs?limit=50&cursor={cursor}",
        "GET /jobs/{id}/status": f"/jobs/{job}/status",
        "GET /jobs/{id}/events": f"/jobs/{job}/events",
        "GET /jobs/{id}/logs": f"/jobs/{job}/logs",
    }
    for name, path in latencies.items():
        value = p50_ms(client, path, args.requests)
        rows.append((f"{name} p50", f"{value:.1f} ms", "< 20 ms", verdict(value, 20)))


def cold(rows: list[tuple[str, str, str, str]], name: str, seconds: float) -> None:
    rows.append((f"{name} cold start", f"{seconds:.1f} s", "< 10 s", verdict(seconds, 10)))


def memory(rows: list[tuple[str, str, str, str]], name: str, mib: float) -> None:
    rows.append((f"{name} RSS", f"{mib:.0f} MiB", "< 500 MiB", verdict(mib, 500)))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--queued", type=int, default=3_000)
    parser.add_argument("--requests", type=int, default=200, help="per latency line")
    parser.add_argument("--deep-pages", type=int, default=200, help="cursor pages walked")
    parser.add_argument("--database", help="use (and fill if empty) this database")
    parser.add_argument("--keep", action="store_true", help="do not drop the database")
    parser.add_argument("--skip", nargs="*", default=[], choices=["up"])
    args = parser.parse_args()
    prefix = f"bench-scale-{uuid.uuid4().hex[:8]}:"
    rows: list[tuple[str, str, str, str]] = []
    keys = redis.Redis.from_url(REDIS_URL)
    running: list[Component] = []
    with database(args.database, keep=args.keep) as url, tempfile.TemporaryDirectory() as tmp:
        events, head = asyncio.run(_stored(url))
        if events == 0:
            db = make_url(url).database
            print(f"filling {args.jobs} jobs ({args.queued} left queued) into {db}", flush=True)
            events, seconds = asyncio.run(fill(url, args.jobs, args.queued))
            print(f"filled {events} events in {seconds:.0f} s ({events / seconds:.0f} events/s)")
            events, head = asyncio.run(_stored(url))
        print(f"store: {events} events, head at position {head}", flush=True)
        asyncio.run(_forget_checkpoint(url))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "REDIS"))}
        env.update(
            EVENT_STORE_URL=url,
            REDIS_URL=REDIS_URL,
            REDIS_PREFIX=prefix,
            SWIFT_TRAINER_DATA_DIR=str(Path(tmp) / "data"),
            LOG_LEVEL="WARNING",
        )
        seconds, peak = run_measured(["projections", "rebuild"], env)
        rate = events / seconds
        rows.append(
            (
                "projections rebuild",
                f"{rate:,.0f} events/s",
                ">= 50,000/s",
                verdict(rate, 50_000, below=False),
            )
        )
        memory(rows, "projections rebuild (peak)", peak)

        nats_server = UnsyncedNatsServer(Path(tmp) / "nats")
        nats_loop = asyncio.new_event_loop()  # the server's child watcher lives on its loop
        nats_loop.run_until_complete(nats_server.start())
        bus = Bus(nats_loop, nats_server.url)
        logs = Path(tmp)
        env.update(NATS_URL=nats_server.url, APP_HOST="127.0.0.1")
        try:
            handler = Component("handler", ["handler"], env, logs)
            running.append(handler)
            cold(
                rows,
                "handler",
                handler.wait_until(lambda: bus.answers_job_state("scale-0000001"), 120),
            )
            memory(rows, "handler at ready", handler.rss)
            start = time.perf_counter()
            handler.wait_until(lambda: bus.events_in_stream() >= events, 3600)
            relay_s = time.perf_counter() - start
            rows.append(
                ("relay: whole store -> empty EVENTS", f"{events / relay_s:,.0f} events/s", "", "")
            )
            memory(rows, "handler after relaying all", handler.rss)

            # The first scheduler on a store has no checkpoint: it folds the whole store.
            scheduler = Component("scheduler", ["scheduler"], env, logs)
            running.append(scheduler)
            ready = view_at(keys, prefix, head)
            cold(rows, "scheduler, no checkpoint yet", scheduler.wait_until(ready, 300))
            memory(rows, "scheduler", scheduler.rss)
            scheduler.stop()  # a leader's clean stop saves a checkpoint
            running.remove(scheduler)
            keys.delete(prefix + "feed:queue")
            scheduler = Component("scheduler", ["scheduler"], env, logs)
            running.append(scheduler)
            cold(rows, "scheduler from its checkpoint", scheduler.wait_until(ready, 300))
            memory(rows, "scheduler", scheduler.rss)

            port = free_port()
            api = Component("api", ["api"], {**env, "APP_PORT": str(port)}, logs)
            running.append(api)
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}{API}", timeout=60)
            cold(rows, "api", api.wait_until(http_ready(client), 120))
            measure_api(client, rows, args)
            memory(rows, "api after reads", api.rss)
            client.close()
            for component in (api, scheduler):
                component.stop()
                running.remove(component)

            if "up" not in args.skip:
                keys.delete(prefix + "feed:queue")
                port = free_port()
                up = Component("up", ["up", "--simulate-gpus", "0", "--port", str(port)], env, logs)
                running.append(up)
                client = httpx.Client(base_url=f"http://127.0.0.1:{port}{API}", timeout=60)
                cold(rows, "up (HTTP ready)", up.wait_until(http_ready(client), 120))
                cold(
                    rows,
                    "up (scheduler view at head)",
                    up.wait_until(view_at(keys, prefix, head), 300),
                )
                for path in ("/jobs?limit=50", "/jobs/scale-0000001/status", "/queue"):
                    client.get(path).raise_for_status()
                memory(rows, "up after reads", up.rss)
                client.close()
        finally:
            for component in reversed(running):
                component.stop()
            bus.close()
            nats_loop.run_until_complete(nats_server.stop())
            nats_loop.close()
            for key in keys.scan_iter(match=prefix + "*", count=10_000):
                keys.delete(key)
            keys.close()
    load = Path("/proc/loadavg").read_text().strip()
    print(f"{events} events in the store, cpus={os.cpu_count()}, loadavg {load}")
    print(f"{'measure':40} {'result':>18} {'goal':>12}  status")
    for name, result, goal, status in rows:
        print(f"{name:40} {result:>18} {goal:>12}  {status}")


if __name__ == "__main__":
    main()
