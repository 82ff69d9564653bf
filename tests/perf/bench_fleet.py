"""The control plane at fleet size: simulated GPU hosts, a deep queue, until it drains.

    uv run python tests/perf/bench_fleet.py [--hosts 100] [--gpus 8] [--jobs 10000]
        [--host-processes 4] [--steps 3] [--step-seconds 0.5] [--timeout 1800]

Starts the distributed shape on loopback: a nats-server, PostgreSQL (a throwaway database
on ``BENCH_POSTGRES_URL``; SQLite when none answers), Redis read models under a throwaway
prefix (``BENCH_REDIS_URL``), and a ``handler``, a ``scheduler`` and an ``api`` process.
Then the fleet: ``--hosts`` runner agents with ``--gpus`` simulated GPUs each, hosted
together in ``--host-processes`` processes. A training is ``fleet_swift.sh``, a shell
stand-in for ``swift sft`` that writes ``--steps`` progress lines ``--step-seconds`` apart
and swift's summary line, so the hosts stay cheap and the control plane is what is measured.

First a wave that fits the free GPUs (one job per two hosts) is submitted and timed from
submission to running. Then ``--jobs`` jobs (1, 2, 4 or 8 GPUs; priority 0-10) are
submitted and the run goes on until every job has ended. Printed, each against its goal:
submission to running on free GPUs (p50, p99), the scheduler's decision time and its whole
pass with the commands the pass waits for (p50, p99, from their histograms), the drain
time, heartbeats and progress reports per second, the CPU and RSS of each component while
the queue drains, and the load on nats-server and Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import redis
from nats.aio.client import Client
from nats.aio.msg import Msg
from perf_processes import Component, rss_mib

from swift_trainer.bus import subjects
from swift_trainer.bus.connection import connect, provision
from swift_trainer.bus.embedded import EmbeddedNatsServer, free_port
from swift_trainer.bus.messages import decode_event_envelope
from swift_trainer.runner.factory import RunnerOptions, create_runner_agent

API = "/api/v1/training"
TRAINER = Path(__file__).with_name("fleet_swift.sh")
GPU_SIZES = (1, 2, 4, 8)
FINAL = frozenset({"JobSucceeded", "JobFailed", "JobCancelled", "JobStopped"})
DECISION_GOAL_S = 1.0
RUNNING_GOAL_S = 1.0
CORE_GOAL = 1.0
PLACEMENT_METRIC = "swift_trainer_placement_pass_duration_seconds"
DECISION_METRIC = "swift_trainer_placement_decision_seconds"
#: The control plane's processes (the hosts and the bench itself are not in it).
PLANE = ("handler", "scheduler", "api", "nats-server")


# --- the fleet's hosts, many runner agents in one process ------------------------------------


async def serve_hosts(first: int, count: int, gpus: int, root: Path) -> None:
    """Run ``count`` runner agents on one NATS connection until SIGTERM or SIGINT."""
    nc = await connect(os.environ["NATS_URL"], name=f"fleet-hosts-{first}")
    agents = []
    for index in range(first, first + count):
        runner_id = f"fleet-host-{index:03d}"
        options = RunnerOptions(
            runner_id=runner_id,
            output_root=str(root / "outputs"),
            state_dir=str(root / "hosts" / runner_id),
            swift_executable=("/bin/sh", str(TRAINER)),
            simulate_gpus=gpus,
            stop_jobs_on_exit=True,
        )
        agent = create_runner_agent(nc, options)
        await agent.start()
        agents.append(agent)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for agent in agents:
        await agent.stop()
    await nc.close()


# --- what the bench watches on NATS ----------------------------------------------------------


@dataclass
class Watch:
    """Job events, heartbeats and progress reports seen on NATS, with their times."""

    submitted: dict[str, float] = field(default_factory=dict)
    scheduled: dict[str, float] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    ended: dict[str, str] = field(default_factory=dict)
    heartbeats: int = 0
    progress: int = 0

    async def on_event(self, msg: Msg) -> None:
        kind = msg.subject.rsplit(".", 1)[-1]
        if kind not in FINAL and kind not in {"JobSubmitted", "JobScheduled", "JobStarted"}:
            return
        envelope = decode_event_envelope(msg.data)
        job_id = envelope.stream_id.removeprefix("job-")
        at = envelope.recorded_at.timestamp()
        if kind == "JobSubmitted":
            self.submitted[job_id] = at
        elif kind == "JobScheduled":
            self.scheduled.setdefault(job_id, at)
        elif kind == "JobStarted":
            self.started.setdefault(job_id, at)
        else:
            self.ended[job_id] = kind

    async def on_heartbeat(self, _msg: Msg) -> None:
        self.heartbeats += 1

    async def on_progress(self, _msg: Msg) -> None:
        self.progress += 1

    def waits(self, job_ids: list[str], until: dict[str, float]) -> list[float]:
        """Seconds from each job's submission to its time in ``until``, sorted."""
        return sorted(
            until[j] - self.submitted[j] for j in job_ids if j in until and j in self.submitted
        )


# --- the run ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quantile(ordered: list[float], q: float) -> float:
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


def histogram_quantile(text: str, name: str, q: float) -> float:
    """A quantile from Prometheus buckets (the upper bound of the bucket it falls in)."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    target = q * buckets[-1][1]
    return next(bound for bound, count in buckets if count >= target)


def job_bodies(prefix: str, count: int, draw: int, steps: int) -> Iterator[dict[str, object]]:
    rng = random.Random(draw)
    for i in range(count):
        yield {
            "job_id": f"{prefix}-{i}",
            "data_path": f"d#{steps}",
            "model_path": "m",
            "gpu_count": rng.choice(GPU_SIZES),
            "priority": rng.randint(0, 10),
        }


async def submit(client: httpx.AsyncClient, bodies: list[dict[str, object]]) -> float:
    """POST every body (32 at a time); returns the seconds it took."""
    started = time.perf_counter()
    pending = iter(bodies)

    async def worker() -> None:
        for body in pending:
            response = await client.post("/jobs", json=body)
            if response.status_code != 201:
                raise SystemExit(f"create: {response.status_code} {response.text[:300]}")

    await asyncio.gather(*(worker() for _ in range(32)))
    return time.perf_counter() - started


async def wait_for(
    what: str,
    ready: Callable[[], Awaitable[bool]],
    components: list[Component],
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for component in components:
            component.check()
        with contextlib.suppress(httpx.HTTPError):
            if await ready():
                return
        await asyncio.sleep(0.2)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


@contextlib.asynccontextmanager
async def event_store_url(tmp: Path) -> AsyncIterator[tuple[str, str]]:
    """A throwaway PostgreSQL database, or a SQLite file when PostgreSQL does not answer."""
    base = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"fleet_{uuid.uuid4().hex[:10]}"
    try:
        admin = await asyncpg.connect(base, timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"PostgreSQL at {base} does not answer ({exc!r}); using SQLite")
        yield f"sqlite+aiosqlite:///{tmp / 'events.db'}", "SQLite"
        return
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = base.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        yield f"{url}/{name}", "PostgreSQL"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@dataclass
class Fleet:
    """The processes of one run and what it measured."""

    options: argparse.Namespace
    tmp: Path
    nats: EmbeddedNatsServer
    cache: redis.Redis
    store_kind: str = ""
    components: list[Component] = field(default_factory=list)
    watch: Watch = field(default_factory=Watch)
    port: int = field(default_factory=free_port)
    scheduler_metrics: int = field(default_factory=free_port)
    wave_ids: list[str] = field(default_factory=list)
    cores: dict[str, float] = field(default_factory=dict)
    rss: dict[str, float] = field(default_factory=dict)
    drain_s: float = 0.0
    submit_s: float = 0.0
    rates: dict[str, float] = field(default_factory=dict)
    placement: str = ""

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}{API}"

    def start(self, store_url: str, redis_url: str, prefix: str) -> None:
        options, tmp = self.options, self.tmp
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NATS_", "REDIS", "EVENT", "OTEL_"))
        }
        env.update(
            NATS_URL=self.nats.url,
            EVENT_STORE_URL=store_url,
            REDIS_URL=redis_url,
            REDIS_PREFIX=prefix,
            SWIFT_TRAINER_DATA_DIR=str(tmp / "data"),
            OUTPUT_ROOT=str(tmp / "outputs"),
            APP_HOST="127.0.0.1",
            APP_PORT=str(self.port),
            LOG_LEVEL="WARNING",
            AUTO_EXPORT="false",
            FLEET_STEPS=str(options.steps),
            FLEET_STEP_SECONDS=str(options.step_seconds),
            FLEET_ROOT=str(tmp),
        )
        logs = tmp / "logs"
        logs.mkdir()
        for name, args in (
            ("handler", ["handler"]),
            ("scheduler", ["scheduler", "--metrics-port", str(self.scheduler_metrics)]),
            ("api", ["api"]),
        ):
            self.components.append(Component(name, args, env, logs))
        per_process = -(-options.hosts // options.host_processes)
        for first in range(0, options.hosts, per_process):
            count = min(per_process, options.hosts - first)
            self.components.append(
                Component(
                    f"hosts-{first}",
                    ["--serve-hosts", str(first), str(count), "--gpus", str(options.gpus)],
                    env,
                    logs,
                    program=[sys.executable, str(Path(__file__))],
                )
            )

    async def run(self, nc: Client) -> None:
        options, watch = self.options, self.watch
        await nc.subscribe(f"{subjects.EVENTS_ROOT}.job.>", cb=watch.on_event)
        await nc.subscribe(f"$KV.{subjects.RUNNERS_BUCKET}.>", cb=watch.on_heartbeat)
        await nc.subscribe(f"{subjects.COMMANDS}.ReportProgress", cb=watch.on_progress)
        total_gpus: int = options.hosts * options.gpus
        async with httpx.AsyncClient(base_url=self.api, timeout=60) as client:

            async def gpus_up() -> bool:
                seen: int = (await client.get("/gpus")).json()["total"]
                return seen >= total_gpus

            await wait_for("the fleet's GPUs", gpus_up, self.components, options.timeout)
            wave = list(job_bodies("wave", max(1, options.hosts // 2), 1, options.steps))
            self.wave_ids = [str(body["job_id"]) for body in wave]
            await submit(client, wave)
            await self._until_ended("the first wave", self.wave_ids)
            await self._drain(client)
            metrics = await client.get(f"http://127.0.0.1:{self.scheduler_metrics}/metrics")
            self.placement = metrics.text

    async def _until_ended(self, what: str, job_ids: list[str]) -> None:
        async def ended() -> bool:
            return all(j in self.watch.ended for j in job_ids)

        await wait_for(f"{what} to end", ended, self.components, self.options.timeout)

    async def _drain(self, client: httpx.AsyncClient) -> None:
        watch = self.watch
        bulk = list(job_bodies("fleet", self.options.jobs, 2, self.options.steps))
        pids = {c.name: c.process.pid for c in self.components}
        if self.nats.pid is not None:
            pids["nats-server"] = self.nats.pid
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        beats, reports = watch.heartbeats, watch.progress
        redis_before = int(self.cache.info("stats")["total_commands_processed"])
        started = time.perf_counter()
        self.submit_s = await submit(client, bulk)
        bulk_ids = [str(body["job_id"]) for body in bulk]

        async def drained() -> bool:
            for name, pid in pids.items():
                self.rss[name] = max(self.rss.get(name, 0.0), rss_mib(pid))
            return all(j in watch.ended for j in bulk_ids)

        await wait_for("the queue to drain", drained, self.components, self.options.timeout)
        self.drain_s = elapsed = time.perf_counter() - started
        self.cores = {
            name: (cpu_seconds(pid) - cpu_before[name]) / elapsed for name, pid in pids.items()
        }
        redis_after = int(self.cache.info("stats")["total_commands_processed"])
        self.rates = {
            "heartbeats": (watch.heartbeats - beats) / elapsed,
            "progress": (watch.progress - reports) / elapsed,
            "redis": (redis_after - redis_before) / elapsed,
        }

    def stop(self) -> None:
        for component in reversed(self.components):
            component.stop()

    def report(self) -> None:
        options = self.options
        waits = self.watch.waits(self.wave_ids, self.watch.started)
        decisions = self.watch.waits(self.wave_ids, self.watch.scheduled)
        running_p50 = statistics.median(waits) if waits else float("nan")
        pass_p50 = histogram_quantile(self.placement, PLACEMENT_METRIC, 0.5)
        pass_p99 = histogram_quantile(self.placement, PLACEMENT_METRIC, 0.99)
        decision_p50 = histogram_quantile(self.placement, DECISION_METRIC, 0.5)
        decision_p99 = histogram_quantile(self.placement, DECISION_METRIC, 0.99)
        plane = sum(self.cores[name] for name in PLANE if name in self.cores)
        failed = sorted(j for j, kind in self.watch.ended.items() if kind != "JobSucceeded")
        print(
            f"fleet: {options.hosts} hosts x {options.gpus} GPUs in {options.host_processes} "
            f"processes; {options.jobs} jobs of {options.steps} steps x "
            f"{options.step_seconds} s; event store {self.store_kind}"
        )
        print(f"cpus={os.cpu_count()} load average {os.getloadavg()[0]:.2f} at the end")
        print(
            f"submit to running on free GPUs ({len(waits)} jobs): p50 {running_p50:.3f} s, "
            f"p99 {quantile(waits, 0.99):.3f} s "
            f"(goal p50 < {RUNNING_GOAL_S} s: {verdict(running_p50 < RUNNING_GOAL_S)})"
        )
        print(
            f"submit to scheduled on free GPUs: p50 {quantile(decisions, 0.5):.3f} s, "
            f"p99 {quantile(decisions, 0.99):.3f} s "
            f"(goal p99 < {DECISION_GOAL_S} s: {verdict(quantile(decisions, 0.99) < 1)})"
        )
        print(
            f"scheduler decision while draining: p50 <= {decision_p50} s, p99 <= "
            f"{decision_p99} s (the upper bounds of the histogram's buckets; goal p99 < "
            f"{DECISION_GOAL_S} s: {verdict(decision_p99 < DECISION_GOAL_S)})"
        )
        print(
            f"scheduler pass while draining, with the claims and starts it waits for: "
            f"p50 <= {pass_p50} s, p99 <= {pass_p99} s"
        )
        print(
            f"queue drain: {self.drain_s:.1f} s for {options.jobs} jobs "
            f"({options.jobs / self.drain_s:.1f} jobs/s; submitting took {self.submit_s:.1f} s);"
            f" {len(failed)} did not succeed"
        )
        print(
            f"heartbeats {self.rates['heartbeats']:.1f}/s, "
            f"progress reports {self.rates['progress']:.1f}/s, "
            f"Redis {self.rates['redis']:.0f} commands/s"
        )
        print(f"{'component':14} {'cores':>6} {'max RSS MiB':>12}   (while draining)")
        for name, cores in self.cores.items():
            print(f"{name:14} {cores:6.2f} {self.rss.get(name, float('nan')):12.0f}")
        print(
            f"control plane ({', '.join(PLANE)}): {plane:.2f} cores "
            f"(goal < {CORE_GOAL}: {verdict(plane < CORE_GOAL)})"
        )
        if failed:
            print(f"jobs that did not succeed: {failed[:10]}")


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


async def run(options: argparse.Namespace) -> None:
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"fleet-{uuid.uuid4().hex[:8]}:"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        nats = EmbeddedNatsServer(tmp / "nats")
        await nats.start()
        fleet = Fleet(options, tmp, nats, redis.Redis.from_url(redis_url))
        nc = await connect(nats.url, name="fleet-bench")
        await provision(nc.jetstream())  # the streams and buckets, before any host asks
        try:
            async with event_store_url(tmp) as (store_url, store_kind):
                fleet.store_kind = store_kind
                fleet.start(store_url, redis_url, prefix)
                try:
                    await fleet.run(nc)
                finally:
                    fleet.stop()
                    if options.keep_logs:
                        shutil.copytree(tmp / "logs", options.keep_logs, dirs_exist_ok=True)
        finally:
            await nc.close()
            await nats.stop()
            for key in fleet.cache.scan_iter(match=prefix + "*"):
                fleet.cache.delete(key)
            fleet.cache.close()
    fleet.report()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--host-processes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--keep-logs", type=Path, help="copy the components' logs here")
    parser.add_argument("--serve-hosts", nargs=2, type=int, metavar=("FIRST", "COUNT"))
    options = parser.parse_args()
    if options.serve_hosts:
        first, count = options.serve_hosts
        root = Path(os.environ["FLEET_ROOT"])
        asyncio.run(serve_hosts(first, count, options.gpus, root))
        return
    asyncio.run(run(options))


if __name__ == "__main__":
    main()
