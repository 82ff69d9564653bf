"""Chaos run of the distributed mode: real processes on loopback, random SIGKILLs, and the
invariants checked from the event log afterwards.

Topology: a 3-node NATS JetStream cluster (streams with 3 replicas), PostgreSQL (a fresh
database on the local server), a Redis of its own (AOF, fsync always), 2 command handlers,
2 schedulers, 2 simulated runners (4 and 2 GPUs) and the API. Jobs go in over HTTP; while
they run, components are killed with SIGKILL and started again: at least one NATS node, a
runner in the middle of training and Redis, the rest at random. Then, from the log and the
processes:

- every job reached ``succeeded`` (simulated jobs do not fail);
- no GPU was in two live jobs at any point of the log;
- no event was appended twice (event ids, and one append per command id), and JetStream
  holds each stored event once;
- every command id sent during the run gets the same answer when sent again;
- the read models after ``projections rebuild`` equal the live ones;
- no process is left behind.

Short run (CI): ``uv run python scripts/chaos.py --jobs 30 --kills 10``.
With preemption among the jobs' random priorities: add ``--preempt-after 1``.
Long run: ``uv run python scripts/chaos.py --jobs 1000 --kills 50 --timeout 3600``.
The report (JSON) goes to stdout's last line and to ``--report``; the exit code is 0 only
when no invariant was violated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import psutil

from swift_trainer.bus import subjects
from swift_trainer.bus.command_client import CommandClient
from swift_trainer.bus.connection import connect
from swift_trainer.bus.embedded import die_with_parent, free_port
from swift_trainer.bus.nats_cluster import LocalNatsCluster
from swift_trainer.bus.relay import POSITION_HEADER
from swift_trainer.core import aggregates
from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.invariants import Violation, gpu_double_bookings, repeated_appends
from swift_trainer.core.job import JobState, JobStatus
from swift_trainer.core.sqlstore import SqlEventStore, open_event_store
from swift_trainer.core.store import RecordedEvent

API = "/api/v1/training"
POSTGRES = os.environ.get("CHAOS_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)  # noqa: T201


class Component:
    """One service process, started again (same arguments) after each kill."""

    def __init__(self, name: str, kind: str, argv: list[str], env: dict[str, str], logs: Path):
        self.name = name
        self.kind = kind
        self.argv = argv
        self.env = env
        self.log_path = logs / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started: list[psutil.Process] = []

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=partial(die_with_parent, os.getpid()),  # noqa: PLW1509
            )
        self.started.append(psutil.Process(self.process.pid))

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


class Topology:
    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root = root
        self.args = args
        self.logs = root / "logs"
        self.logs.mkdir(parents=True)
        self.cluster = LocalNatsCluster(root / "nats")
        self.database = f"chaos_{uuid.uuid4().hex[:10]}"
        self.redis_port = free_port()
        self.redis: Component | None = None
        self.api_port = free_port()
        self.components: dict[str, Component] = {}

    @property
    def store_url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.database}"

    def env(self, name: str) -> dict[str, str]:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NATS_", "REDIS", "EVENT_STORE", "OTEL_", "SWIFT_TRAINER_"))
        }
        base.update(
            NATS_URL=self.cluster.url,
            NATS_STREAM_REPLICAS="3",
            EVENT_STORE_URL=self.store_url,
            REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            SWIFT_TRAINER_DATA_DIR=str(self.root / "data" / name),
            OUTPUT_ROOT=str(self.root / "outputs"),
            APP_HOST="127.0.0.1",
            APP_PORT=str(self.api_port),
            LOG_LEVEL="INFO",
            COMMAND_TIMEOUT_S="5",
        )
        if self.args.preempt_after is not None:
            # Urgent jobs stop running ones of lower priority after this many seconds.
            base.update(
                PREEMPT_MIN_RUNTIME_S=str(self.args.preempt_after),
                PREEMPT_GRACE_S="10",
                PREEMPT_MAX_PER_HOUR="3",
            )
        return base

    async def create_database(self) -> None:
        conn = await asyncpg.connect(POSTGRES)
        try:
            await conn.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await conn.close()

    async def drop_database(self) -> None:
        conn = await asyncpg.connect(POSTGRES)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await conn.close()

    def start(self) -> None:
        self.cluster.start()
        (self.root / "redis").mkdir()
        self.redis = Component(
            "redis",
            "redis",
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.root / "redis"),
            ],
            dict(os.environ),
            self.logs,
        )
        self.redis.start()
        cli = [sys.executable, "-m", "swift_trainer.cli"]
        step = str(self.args.step_seconds)
        specs: list[tuple[str, str, list[str]]] = [
            ("handler-1", "handler", ["handler"]),
            ("handler-2", "handler", ["handler"]),
            *(
                (
                    f"scheduler-{i}",
                    "scheduler",
                    [
                        "scheduler",
                        "--scheduler-id",
                        f"s{i}",
                        "--tick",
                        "0.5",
                        "--start-timeout",
                        "15",
                        "--vanished-grace",
                        "8",
                    ],
                )
                for i in (1, 2)
            ),
            *(
                (
                    f"runner-{i}",
                    "runner",
                    [
                        "runner",
                        "--runner-id",
                        f"r{i}",
                        "--simulate-gpus",
                        str(gpus),
                        "--simulate-step-seconds",
                        step,
                        "--heartbeat-s",
                        "1",
                        "--lease-s",
                        "15",
                        "--grace-period-s",
                        "5",
                        "--stop-jobs-on-exit",
                    ],
                )
                for i, gpus in ((1, 4), (2, 2))
            ),
            ("api", "api", ["api"]),
        ]
        for name, kind, argv in specs:
            component = Component(name, kind, [*cli, *argv], self.env(name), self.logs)
            self.components[name] = component
            component.start()

    def every_process(self) -> list[psutil.Process]:
        found = [p for comp in self.components.values() for p in comp.started]
        if self.redis is not None:
            found.extend(self.redis.started)
        return found

    def stop(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for component in self.components.values():
            component.terminate()
        for name, component in self.components.items():
            codes[name] = component.wait(90)  # a loaded machine stops slowly
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait(10)
        self.cluster.stop()
        return codes


class Run:
    """The workload, the faults and the checks."""

    def __init__(self, topology: Topology, args: argparse.Namespace) -> None:
        self.top = topology
        self.args = args
        self.rng = random.Random(args.seed)
        self.http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{topology.api_port}{API}", timeout=15
        )
        self.store: SqlEventStore | None = None
        self.states: dict[str, JobState] = {}
        self.position = 0
        self.log: list[RecordedEvent] = []
        self.created: dict[str, tuple[str, int, dict[str, Any]]] = {}
        self.sent: list[tuple[str, c.AnyCommand, dict[str, Any]]] = []
        self.kills: Counter[str] = Counter()
        self.violations: list[Violation] = []
        self.notes: dict[str, Any] = {}

    # --- plumbing ----------------------------------------------------------------------

    async def follow(self) -> None:
        """Fold the store's log into job states (the authority for every check)."""
        assert self.store is not None
        while True:
            batch = await self.store.read_all(after_position=self.position, limit=5000)
            if not batch:
                return
            for recorded in batch:
                self.log.append(recorded)
                self.position = recorded.position
                if recorded.stream_id.startswith("job-"):
                    job_id = recorded.stream_id[4:]
                    state = self.states.get(job_id) or aggregates.initial(recorded.stream_id)
                    folded = aggregates.fold(recorded.stream_id, [recorded], state)
                    assert isinstance(folded, JobState)
                    self.states[job_id] = folded

    async def settle(self, quiet_s: float = 3.0, limit_s: float = 60.0) -> None:
        """Follow the log until nothing new arrives for ``quiet_s``: after the last job,
        schedulers still release its GPU claim, and the checks must see that too."""
        deadline = time.monotonic() + limit_s
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            await self.follow()
            if self.position != last:
                last, since = self.position, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return
            await asyncio.sleep(0.3)

    async def wait_api(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                gpus = (await self.http.get("/gpus")).json()
                if gpus.get("total") == 6:
                    return
            await asyncio.sleep(0.3)
        raise RuntimeError("the API never showed the runners' 6 GPUs")

    # --- workload ----------------------------------------------------------------------

    def job_body(self, index: int) -> dict[str, Any]:
        body = {
            "job_id": f"chaos-{index:05d}",
            "data_path": "chaos/data.jsonl#1000",
            "model_path": "sim/model",
            "gpu_count": self.rng.choice((1, 1, 1, 2)),
            "priority": self.rng.randint(0, 10),
            "max_retries": 20,
            "train_args": {"max_steps": self.args.steps, "save_steps": 5},
        }
        if self.args.gang_every and index % self.args.gang_every == self.args.gang_every - 1:
            # A 2-node job: one rank on each runner, placed, lost and requeued as one.
            body.update(nodes=2, gpu_count=self.rng.choice((1, 2)))
        return body

    async def submit_all(self) -> None:
        for index in range(self.args.jobs):
            body = self.job_body(index)
            key = f"chaos-{self.args.seed}-{index}"
            reply = None
            for _ in range(60):
                try:
                    reply = await self.http.post(
                        "/jobs", json=body, headers={"Idempotency-Key": key}
                    )
                except httpx.HTTPError:
                    await asyncio.sleep(0.5)
                    continue
                if reply.status_code < 500:
                    break
                await asyncio.sleep(0.5)
            if reply is None or reply.status_code != 201:
                what = "no answer" if reply is None else f"{reply.status_code} {reply.text}"
                raise RuntimeError(f"create {body['job_id']}: {what}")
            self.created[key] = (body["job_id"], reply.status_code, body)

    async def poke_priorities(self, client: CommandClient, count: int) -> None:
        """Commands straight over NATS whose answers are checked again at the end: accepted
        while a job waits, refused once it runs or ended."""
        ids = [body["job_id"] for _, _, body in self.created.values()]
        for _ in range(count):
            command = c.ChangePriority(
                job_id=self.rng.choice(ids), priority=self.rng.randint(0, 10)
            )
            command_id = uuid.uuid4().hex
            try:
                reply = await client.send(command, command_id=command_id, timeout=5)
            except Exception as exc:
                log(f"priority change not answered ({exc!r}); it is re-sent at the end anyway")
                continue
            self.sent.append((command_id, command, _answer(reply)))
            await asyncio.sleep(self.rng.uniform(0.05, 0.3))

    # --- faults ------------------------------------------------------------------------

    def kill_plan(self) -> list[str]:
        if self.args.kills == 0:
            return []
        # The runner is killed first, while the queue is full and training certainly runs;
        # the other kills come in random order.
        others = ["handler", "scheduler", "runner", "api", "nats", "handler", "scheduler"]
        rest = ["nats", "redis"] + [self.rng.choice(others) for _ in range(self.args.kills - 3)]
        self.rng.shuffle(rest)
        return ["runner-mid-training", *rest]

    async def kill(self, what: str) -> None:
        top = self.top
        if what == "nats":
            node = self.rng.choice(top.cluster.nodes)
            log(f"kill -9 NATS node {node.name}")
            top.cluster.kill_node(node.index)
            self.kills["nats"] += 1
            await asyncio.sleep(self.rng.uniform(1.0, 4.0))
            await asyncio.to_thread(top.cluster.start_node, node.index)
            return
        if what == "redis":
            assert top.redis is not None
            log("kill -9 Redis")
            top.redis.kill()
            self.kills["redis"] += 1
            await asyncio.sleep(self.rng.uniform(0.5, 2.0))
            top.redis.start()
            return
        if what == "runner-mid-training":
            busy: set[str | None] = set()
            for _ in range(300):  # until some runner trains (up to a minute)
                await self.follow()
                busy = {s.runner_id for s in self.states.values() if s.status is JobStatus.RUNNING}
                if busy or self.done():
                    break
                await asyncio.sleep(0.2)
            name = f"runner-{self.rng.choice(sorted(map(str, busy)))[1:]}" if busy else "runner-1"
            self.notes.setdefault("runner_kills_mid_training", 0)
            self.notes["runner_kills_mid_training"] += bool(busy)
            kind = "runner"
        else:
            kind = what
            name = self.rng.choice([n for n, comp in top.components.items() if comp.kind == kind])
        component = top.components[name]
        log(f"kill -9 {name}")
        component.kill()
        self.kills[kind] += 1
        await asyncio.sleep(self.rng.uniform(0.5, 3.0))
        component.start()

    # --- the run -----------------------------------------------------------------------

    def done(self) -> bool:
        ids = [body["job_id"] for _, _, body in self.created.values()]
        return len(ids) == self.args.jobs and all(
            self.states.get(job_id) is not None
            and self.states[job_id].status is JobStatus.SUCCEEDED
            for job_id in ids
        )

    async def run(self) -> dict[str, Any]:
        top = self.top
        await top.create_database()
        self.store = open_event_store(top.store_url)
        await self.store.setup()
        top.start()
        await self.wait_api()
        nc = await connect(top.cluster.url, name="chaos")
        client = CommandClient(nc, timeout=5, actor="chaos")
        started = time.monotonic()
        try:
            await self.submit_all()
            log(f"{len(self.created)} jobs submitted in {time.monotonic() - started:.1f}s")
            pokes = asyncio.create_task(self.poke_priorities(client, self.args.jobs // 3))
            plan = self.kill_plan()
            work = self.args.jobs * 1.25 * self.args.steps * self.args.step_seconds / 6
            interval = max(2.0, min(8.0, work / (len(plan) + 1)))
            deadline = started + self.args.timeout
            for what in plan:
                await asyncio.sleep(interval * self.rng.uniform(0.6, 1.4))
                await self.kill(what)
            await pokes
            while time.monotonic() < deadline:
                await self.follow()
                if self.done():
                    break
                await asyncio.sleep(0.5)
            drained = time.monotonic() - started
            await self.settle()
            report = await self.check(client, nc, drained)
        finally:
            await nc.close()
        return report

    # --- the checks --------------------------------------------------------------------

    async def check(self, client: CommandClient, nc: Any, drained: float) -> dict[str, Any]:
        violations = self.violations
        await self.wait_api()  # the last kill may have been the API's
        statuses = Counter(
            str(self.states[body["job_id"]].status) if body["job_id"] in self.states else "absent"
            for _, _, body in self.created.values()
        )
        for _, _, body in self.created.values():
            state = self.states.get(body["job_id"])
            if state is None or state.status is not JobStatus.SUCCEEDED:
                status = "absent" if state is None else state.status
                violations.append(Violation("job_not_succeeded", 0, f"{body['job_id']}: {status}"))
        booked, placements = gpu_double_bookings(self.log)
        violations.extend(booked)
        violations.extend(repeated_appends(self.log))
        violations.extend(await self.check_jetstream(nc))
        violations.extend(await self.check_answers(client))
        violations.extend(await self.check_read_models())
        healed: Counter[str] = Counter()
        preemptions = sum(1 for recorded in self.log if recorded.type == "JobPreempted")
        for recorded in self.log:
            if recorded.type == "JobLost":
                event = e.decode_event("JobLost", recorded.payload)
                assert isinstance(event, e.JobLost)
                healed[_rule_of(event.reason)] += 1
        return {
            "jobs": len(self.created),
            "statuses": dict(statuses),
            "events": len(self.log),
            "placements": placements,
            "preemptions": preemptions,
            "kills": dict(self.kills),
            "kills_total": sum(self.kills.values()),
            "time_to_drain_s": round(drained, 1),
            "commands_rechecked": len(self.sent) + len(self.created),
            "jobs_lost_by_rule": dict(healed),
            "notes": self.notes,
            "violations": [msgspec.structs.asdict(v) for v in violations],
        }

    async def check_jetstream(self, nc: Any) -> list[Violation]:
        js = nc.jetstream()
        found: list[Violation] = []
        for _ in range(100):  # the relay may still publish, a scheduler still release GPUs
            await self.follow()
            stored = len(self.log)
            info = await js.stream_info(subjects.EVENTS_STREAM)
            if info.state.messages == stored:
                break
            await asyncio.sleep(0.2)
        if info.state.messages != stored:
            found.append(
                Violation(
                    "jetstream_count",
                    self.position,
                    f"EVENTS holds {info.state.messages} messages for {stored} stored events",
                )
            )
        if info.state.last_seq:
            last = await js.get_msg(subjects.EVENTS_STREAM, seq=info.state.last_seq)
            position = int((last.headers or {}).get(POSITION_HEADER, "0"))
            if position != self.position:
                found.append(Violation("jetstream_last", position, f"last published {position}"))
        self.notes["jetstream_replicas"] = info.config.num_replicas
        return found

    async def check_answers(self, client: CommandClient) -> list[Violation]:
        found = []
        for command_id, command, first in self.sent:
            again = _answer(await client.send(command, command_id=command_id, timeout=10))
            if again != first:
                found.append(Violation("answer_changed", 0, f"{command_id}: {first} then {again}"))
        for key, (job_id, status, body) in self.created.items():
            reply = await self.http.post("/jobs", json=body, headers={"Idempotency-Key": key})
            if reply.status_code != status or reply.json().get("job_id") != job_id:
                found.append(
                    Violation(
                        "answer_changed",
                        0,
                        f"create {job_id}: {status} then {reply.status_code} {reply.text[:200]}",
                    )
                )
        self.notes["refused_then_rechecked"] = sum(1 for _, _, a in self.sent if not a["ok"])
        return found

    async def jobs_view(self) -> dict[str, Any]:
        items: dict[str, Any] = {}
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 200}
            if cursor:
                params["cursor"] = cursor
            page = (await self.http.get("/jobs", params=params)).json()
            for item in page["items"]:
                items[item["job_id"]] = item
            cursor = page.get("next_cursor")
            if not cursor:
                return items

    async def check_read_models(self) -> list[Violation]:
        ids = {body["job_id"] for _, _, body in self.created.values()}
        deadline = time.monotonic() + 60
        live: dict[str, Any] = {}
        while time.monotonic() < deadline:  # the projector catches up with the last events
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                live = await self.jobs_view()
                if ids <= set(live) and all(
                    live[j]["version"] == self.states[j].version for j in ids if j in self.states
                ):
                    break
            await asyncio.sleep(0.5)
        env = self.top.env("rebuild")
        rebuilt = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "swift_trainer.cli", "projections", "rebuild"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if rebuilt.returncode != 0:
            return [Violation("rebuild_failed", 0, rebuilt.stderr[-2000:])]
        self.notes["rebuild"] = json.loads(rebuilt.stdout.strip().splitlines()[-1])
        after = await self.jobs_view()
        if after != live:
            differing = sorted(j for j in set(after) | set(live) if after.get(j) != live.get(j))
            return [
                Violation(
                    "read_models_differ",
                    0,
                    f"{len(differing)} jobs differ after rebuild, e.g. {differing[:3]}",
                )
            ]
        return []


def _rule_of(reason: str) -> str:
    for rule, words in (
        ("runner_lease_expired", "stopped heartbeating"),
        ("start_timeout", "did not report a start"),
        ("process_vanished", "runs no process"),
    ):
        if words in reason:
            return rule
    return "other"


def _answer(reply: Any) -> dict[str, Any]:
    return {
        "ok": reply.ok,
        "events": [x.event_id for x in reply.events],
        "error": None if reply.error is None else reply.error.code,
    }


def leftovers(
    processes: list[psutil.Process], root: Path, log_events: list[RecordedEvent]
) -> list[str]:
    """Processes of this run still alive: the components (by the handle taken at start,
    which knows its create time), and the trainings the runners reported starting."""
    alive = [f"{p.pid} {p.name()}" for p in processes if _running(p)]
    for recorded in log_events:
        if recorded.type != "JobStarted":
            continue
        event = e.decode_event("JobStarted", recorded.payload)
        assert isinstance(event, e.JobStarted)
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(event.pid)
            if str(root) in " ".join(process.cmdline()) and _running(process):
                alive.append(f"{event.pid} training {event.job_id}")
    return alive


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def main_async(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="swift-trainer-chaos-"))
    log(f"run folder {root}")
    top = Topology(root, args)
    run = Run(top, args)
    report: dict[str, Any] = {}
    work = asyncio.create_task(run.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # interrupted: still clean up below
        loop.add_signal_handler(sig, work.cancel)
    try:
        report = await work
    except asyncio.CancelledError:
        log("interrupted; cleaning up")
        report = {"violations": [{"rule": "interrupted", "position": 0, "message": ""}]}
    except Exception as exc:
        log(f"the run broke: {exc!r}")
        report = {"violations": [{"rule": "run_broke", "position": 0, "message": repr(exc)}]}
    finally:
        codes = top.stop()
        report["exit_codes"] = codes
        await asyncio.sleep(0.5)
        left = leftovers(top.every_process() + top.cluster.spawned, root, run.log)
        report["processes_left"] = left
        for entry in left:  # end what this run started, by pid
            with contextlib.suppress(psutil.Error, ValueError):
                psutil.Process(int(entry.split()[0])).kill()
        if run.store is not None:
            await run.store.close()
        await run.http.aclose()
        with contextlib.suppress(Exception):
            await top.drop_database()
    if report.get("processes_left"):
        report.setdefault("violations", []).append(
            {"rule": "process_left", "position": 0, "message": str(report["processes_left"])}
        )
    report["run_folder"] = str(root)
    text = json.dumps(report, sort_keys=True)
    if args.report:
        await asyncio.to_thread(Path(args.report).write_text, text + "\n", encoding="utf-8")
    log(
        f"jobs {report.get('jobs')} {report.get('statuses')}, kills {report.get('kills')}, "
        f"drained in {report.get('time_to_drain_s')}s, violations {len(report['violations'])}"
    )
    print(text, flush=True)  # noqa: T201
    return 0 if not report["violations"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40, help="simulated steps per job")
    parser.add_argument(
        "--gang-every", type=int, default=5, help="every N-th job spans both runners (0: none)"
    )
    parser.add_argument("--step-seconds", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=240, help="seconds to drain")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--report", help="also write the JSON report here")
    parser.add_argument(
        "--preempt-after",
        type=float,
        help="let jobs of higher priority preempt a job once it has run this many seconds "
        "(PREEMPT_MIN_RUNTIME_S; default: the service's own, 600 s, which short runs never reach)",
    )
    args = parser.parse_args()
    if 0 < args.kills < 3:
        parser.error("--kills must be 0 (no faults) or at least 3 (a NATS node, a runner, Redis)")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
