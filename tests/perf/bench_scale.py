"""The service at the size a busy team reaches: a PostgreSQL store full of jobs.

    uv run python tests/perf/bench_scale.py [--jobs 100000] [--queued 3000] [--requests 200]

Fills a throwaway PostgreSQL database (``BENCH_POSTGRES_URL``'s server, default
127.0.0.1:5432 as ``postgres``) with ``--jobs`` job streams written straight into the store
in batches, not through the API: each job's events come from the real aggregate
(``core.job.decide``/``evolve``), about ten per job (submitted, queued, scheduled, started,
progress reports, checkpoints, then succeeded or failed; the last ``--queued`` jobs stay
queued). Then, against Redis (``BENCH_REDIS_URL``, a throwaway prefix) and an embedded
nats-server, it measures and prints each figure next to its goal (issue 16):

- ``projections rebuild``: events per second (goal >= 50k/s);
- the ``api`` process: cold start to ``/health/ready`` (goal < 10 s) and its RSS (< 500 MiB);
- API p50 latency of ``GET /jobs`` first page, a deep cursor page, and one job's status,
  events and logs (goal < 20 ms each).

The scheduler's pass at 10k queued over 1,000 GPUs is measured by ``bench_placement.py``.
Everything it starts is stopped and everything it creates (database, Redis keys) is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import redis
from sqlalchemy import make_url

from swift_trainer.bus.embedded import EmbeddedNatsServer, free_port
from swift_trainer.core import commands as c
from swift_trainer.core import job as domain
from swift_trainer.core.events import encode_event, event_type
from swift_trainer.core.ids import new_id
from swift_trainer.core.spec import decode_spec
from swift_trainer.core.sqlstore import open_event_store
from swift_trainer.core.store import NO_STREAM, EventMetadata, NewEvent

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


@contextmanager
def database() -> Iterator[str]:
    name = f"bench_scale_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--queued", type=int, default=3_000)
    parser.add_argument("--requests", type=int, default=200, help="per latency line")
    parser.add_argument("--deep-pages", type=int, default=200, help="cursor pages walked")
    args = parser.parse_args()
    prefix = f"bench-scale-{uuid.uuid4().hex[:8]}:"
    rows: list[tuple[str, str, str, str]] = []
    with database() as url, tempfile.TemporaryDirectory() as tmp:
        print(f"filling {args.jobs} jobs ({args.queued} left queued) into {make_url(url).database}")
        events, seconds = asyncio.run(fill(url, args.jobs, args.queued))
        print(f"filled {events} events in {seconds:.0f} s ({events / seconds:.0f} events/s)")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "REDIS"))}
        env.update(
            EVENT_STORE_URL=url,
            REDIS_URL=REDIS_URL,
            REDIS_PREFIX=prefix,
            SWIFT_TRAINER_DATA_DIR=str(Path(tmp) / "data"),
            LOG_LEVEL="WARNING",
        )
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "swift_trainer.cli", "projections", "rebuild"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        rebuild_s = time.perf_counter() - start
        rate = events / rebuild_s
        rows.append(
            (
                "projections rebuild",
                f"{rate:,.0f} events/s",
                ">= 50,000/s",
                verdict(rate, 50_000, below=False),
            )
        )

        nats = EmbeddedNatsServer(Path(tmp) / "nats")
        nats_loop = asyncio.new_event_loop()  # the server's child watcher lives on its loop
        nats_loop.run_until_complete(nats.start())
        port = free_port()
        api = None
        try:
            env.update(NATS_URL=nats.url, APP_HOST="127.0.0.1", APP_PORT=str(port))
            start = time.perf_counter()
            api = subprocess.Popen(
                [sys.executable, "-m", "swift_trainer.cli", "api"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}{API}", timeout=60)
            while True:
                if api.poll() is not None:
                    raise SystemExit(f"api exited: {api.communicate()[1][-2000:]}")
                try:
                    if client.get("/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            cold = time.perf_counter() - start
            rows.append(("api cold start to ready", f"{cold:.1f} s", "< 10 s", verdict(cold, 10)))
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
            rss = rss_mib(api.pid)
            rows.append(("api RSS", f"{rss:.0f} MiB", "< 500 MiB", verdict(rss, 500)))
            client.close()
        finally:
            if api is not None and api.poll() is None:
                api.send_signal(signal.SIGTERM)
                try:
                    api.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    api.kill()
                    api.wait()
            nats_loop.run_until_complete(nats.stop())
            nats_loop.close()
            keys = redis.Redis.from_url(REDIS_URL)
            for key in keys.scan_iter(match=prefix + "*", count=10_000):
                keys.delete(key)
            keys.close()
    print(f"{args.jobs} jobs, {events} events, cpus={os.cpu_count()}")
    print(f"{'measure':34} {'result':>18} {'goal':>12}  status")
    for name, result, goal, status in rows:
        print(f"{name:34} {result:>18} {goal:>12}  {status}")


if __name__ == "__main__":
    main()
