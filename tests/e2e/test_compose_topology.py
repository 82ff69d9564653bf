"""compose.yaml's components, run here as local processes: the topology comes up, one
simulated job succeeds through it, every replica serves metrics, and one trace follows the
job across api, handler, scheduler and runner.

Each component's command, replica count and environment are read from compose.yaml. Only
what names another container is pointed at this machine: ``nats``, ``postgres``, ``redis``
and ``otel-collector`` become a test nats-server, a database of this test's own on the local
PostgreSQL, a unique key prefix on the local Redis and an OTLP/HTTP receiver in the test;
the ports the containers would each have to themselves become free ports.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis
from tests.conftest import service_unavailable
from tests.deploy.compose_file import command_of, environment_of, replicas_of
from tests.deploy.nats_auth import compose_passwords, nats_with_shipped_auth

from swift_trainer.bus.embedded import free_port

from .otlp_receiver import Receiver, otlp_receiver

POSTGRES = os.environ.get("SWIFT_TRAINER_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("SWIFT_TRAINER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
COMPONENTS = ("handler", "scheduler", "api", "sim-runner")
API = "/api/v1/training"


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[str]
    metrics_port: int | None
    log: Path


@dataclass
class Topology:
    base: str
    processes: list[Process]
    traces: Receiver
    nats_url: str

    def check_alive(self) -> None:
        for process in self.processes:
            if process.popen.poll() is not None:
                pytest.fail(f"{process.name} died: {process.log.read_text()[-3000:]}")


def _wait(what: str, probe: Callable[[], Any], topology: Topology, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topology.check_alive()
        try:
            result = probe()
        except httpx.HTTPError:
            result = None
        if result:
            return result
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


async def _create_database(name: str) -> None:
    conn = await asyncpg.connect(f"{POSTGRES}/test", timeout=3)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(f"{POSTGRES}/test", timeout=3)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def database() -> Iterator[str]:
    name = f"compose_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_create_database(name))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        service_unavailable(f"PostgreSQL at {POSTGRES}", exc)
    try:
        yield f"{POSTGRES.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    finally:
        asyncio.run(_drop_database(name))


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_unavailable(f"Redis at {REDIS_URL}", exc)
    prefix = f"test-compose-{uuid.uuid4().hex[:8]}:"
    try:
        yield prefix
    finally:
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """The shipped per-component NATS users and permissions, as compose runs them."""
    with nats_with_shipped_auth(tmp_path / "nats") as url:
        yield url


def _local_environment(
    name: str, *, nats_url: str, database: str, redis_prefix: str, traces: str
) -> dict[str, str]:
    """The service's compose environment, its container addresses pointed at this machine."""
    compose = environment_of(name)
    assert compose["NATS_URL"] == "nats://nats:4222", name
    assert "@postgres:5432/" in compose["EVENT_STORE_URL"], name
    assert compose["REDIS_URL"].startswith("redis://redis:6379"), name
    assert compose["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://otel-collector:"), name
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "REDIS", "EVENT", "OTEL"))
    }
    env.update(compose)
    env.update(
        NATS_URL=nats_url,
        EVENT_STORE_URL=database,
        REDIS_URL=REDIS_URL,
        REDIS_PREFIX=redis_prefix,
        OTEL_EXPORTER_OTLP_ENDPOINT=traces,
        OTEL_BSP_SCHEDULE_DELAY="200",
        SWIFT_SIM_STEP_SECONDS="0.02",
    )
    return env


def _local_command(command: list[str], *, api_port: int) -> tuple[list[str], int | None]:
    """Free ports for ``--port`` and ``--metrics-port`` (each container had its own)."""
    local = list(command)
    metrics_port = None
    if "--metrics-port" in local:
        metrics_port = free_port()
        local[local.index("--metrics-port") + 1] = str(metrics_port)
    if "--port" in local:
        local[local.index("--port") + 1] = str(api_port)
    return local, metrics_port


@pytest.fixture
def topology(tmp_path: Path, nats_url: str, database: str, redis_prefix: str) -> Iterator[Topology]:
    api_port = free_port()
    processes: list[Process] = []
    with otlp_receiver() as traces:
        topology = Topology(f"http://127.0.0.1:{api_port}", processes, traces, nats_url)
        try:
            for name in COMPONENTS:
                replicas = replicas_of(name)
                for replica in range(1, replicas + 1):
                    env = _local_environment(
                        name,
                        nats_url=nats_url,
                        database=database,
                        redis_prefix=redis_prefix,
                        traces=traces.endpoint,
                    )
                    home = tmp_path / f"{name}-{replica}"
                    home.mkdir()
                    env.update(
                        SWIFT_TRAINER_DATA_DIR=str(home / "data"),
                        OUTPUT_ROOT=str(tmp_path / "outputs"),
                        APP_HOST="127.0.0.1",
                        APP_PORT=str(api_port),
                    )
                    command, metrics_port = _local_command(command_of(name), api_port=api_port)
                    log = home / "stderr.log"
                    with log.open("w") as stderr:
                        popen = subprocess.Popen(
                            [sys.executable, "-m", "swift_trainer.cli", *command],
                            env=env,
                            cwd=home,
                            stdout=subprocess.DEVNULL,
                            stderr=stderr,
                            text=True,
                            start_new_session=True,
                        )
                    processes.append(Process(f"{name}-{replica}", popen, metrics_port, log))
            yield topology
        finally:
            for process in processes:
                if process.popen.poll() is None:
                    process.popen.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.popen.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.popen.pid, signal.SIGKILL)
                    process.popen.wait()


def _admin_key(topology: Topology) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "API_"))}
    env.update(
        NATS_URL=topology.nats_url,
        NATS_USER="operator",
        NATS_PASSWORD=compose_passwords()["NATS_OPERATOR_PASSWORD"],
    )
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "swift_trainer.cli",
            "keys",
            "create",
            "--owner",
            "ops",
            "--role",
            "admin",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


def test_compose_services_run_a_job_here_with_one_trace_across_them(topology: Topology) -> None:
    assert replicas_of("handler") == 2
    assert replicas_of("scheduler") == 2
    assert len(topology.processes) == 6, "2 handlers, 2 schedulers, api, runner"
    with httpx.Client(base_url=topology.base + API, timeout=10) as http:
        _wait("readiness", lambda: http.get("/health/ready").status_code == 200, topology)
        # API_AUTH=required in compose: the first admin key, made as the NATS operator.
        assert http.get("/jobs").status_code == 401
        admin = {"Authorization": f"Bearer {_admin_key(topology)}"}
        http.headers.update(admin)
        _wait("the runner's GPUs", lambda: http.get("/gpus").json()["total"] == 2, topology)
        body = {"job_id": "composed", "data_path": "d#40", "model_path": "m", "gpu_count": 2}
        created = http.post("/jobs", json=body)
        assert created.status_code == 201, created.text
        _wait(
            "the job to succeed",
            lambda: http.get("/jobs/composed/status").json()["status"] == "succeeded",
            topology,
        )
        job = http.get("/jobs/composed").json()
        assert job["last_runner_id"] == "sim-host-1"
        leaders = _wait(
            "a leading scheduler", lambda: http.post("/queue/process").json()["leader"], topology
        )
        assert leaders

    for process in topology.processes:
        if process.metrics_port is not None:
            text = httpx.get(f"http://127.0.0.1:{process.metrics_port}/metrics").text
            assert "swift_trainer_" in text, process.name
    _wait(
        "the jobs gauge (sampled every 2 s)",
        lambda: (
            'swift_trainer_jobs{status="succeeded"} 1.0'
            in httpx.get(f"{topology.base}/metrics", headers=admin).text
        ),
        topology,
        timeout=15,
    )

    def job_trace() -> dict[str, set[str]] | None:
        spans = topology.traces.snapshot()
        roots = [s for s in spans if s.name == "POST /api/v1/training/jobs"]
        if not roots:
            return None
        trace_id = roots[0].trace_id
        by_service: dict[str, set[str]] = {}
        for span in spans:
            if span.trace_id == trace_id:
                by_service.setdefault(span.service, set()).add(span.name)
        runner = by_service.get("swift-trainer-runner", set())
        if "send ReportProgress" not in runner:
            return None
        return by_service

    services = _wait("the job's trace", job_trace, topology, timeout=30)
    assert "POST /api/v1/training/jobs" in services["swift-trainer-api"]
    assert "handle SubmitJob" in services["swift-trainer-handler"]
    assert "scheduler place job" in services["swift-trainer-scheduler"]
    assert {"runner JobScheduled", "swift sft start", "send ReportStarted"} <= services[
        "swift-trainer-runner"
    ]

    # LOG_FORMAT=json in compose.yaml: every line logged is JSON with the trace fields
    # (uvicorn's own lines in the api included).
    for name in ("handler-1", "api-1"):
        log = next(p.log for p in topology.processes if p.name == name)
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        assert lines, f"{name} logged nothing"
        for line in lines:
            record = json.loads(line)
            assert {"level", "logger", "message", "trace_id", "span_id"} <= set(record), name
