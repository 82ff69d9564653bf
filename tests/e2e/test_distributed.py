"""The distributed mode: handler, scheduler, runner and API as separate processes.

They share one nats-server (started here, as a deployment would run its own), one SQLite
event store file and Redis read models under a throwaway prefix, and find each other only
through those, as they would across hosts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from tests.conftest import service_unavailable

from swift_trainer.bus.embedded import EmbeddedNatsServer, free_port

REDIS_URL = os.environ.get("SWIFT_TRAINER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
API = "/api/v1/training"


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    server = EmbeddedNatsServer(tmp_path / "nats")
    loop = asyncio.new_event_loop()
    loop.run_until_complete(server.start())
    try:
        yield server.url
    finally:
        loop.run_until_complete(server.stop())
        loop.close()


def test_separate_processes_run_a_job_end_to_end(tmp_path: Path, nats_url: str) -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        service_unavailable("Redis", exc)
    prefix = f"test-dist-{uuid.uuid4().hex[:8]}:"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "REDIS", "EVENT"))}
    env.update(
        NATS_URL=nats_url,
        EVENT_STORE_URL=f"sqlite+aiosqlite:///{tmp_path / 'events.db'}",
        REDIS_URL=REDIS_URL,
        REDIS_PREFIX=prefix,
        SWIFT_TRAINER_DATA_DIR=str(tmp_path / "data"),
        OUTPUT_ROOT=str(tmp_path / "outputs"),
        APP_HOST="127.0.0.1",
        APP_PORT=str(port),
        LOG_LEVEL="WARNING",
        SWIFT_SIM_STEP_SECONDS="0.02",
    )
    parts = {
        "handler": ["handler"],
        "scheduler": ["scheduler"],
        "runner": ["runner", "--runner-id", "gpu-host-1", "--simulate-gpus", "2"],
        "api": ["api"],
    }
    processes: dict[str, subprocess.Popen[str]] = {}
    try:
        for name, args in parts.items():
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", "swift_trainer.cli", *args],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}{API}", timeout=30)

        def wait(what: str, probe: object, timeout: float = 60) -> object:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for name, process in processes.items():
                    assert process.poll() is None, (
                        f"{name} died: {process.communicate()[1][-2000:]}"
                    )
                try:
                    result = probe()  # type: ignore[operator]
                except httpx.HTTPError:
                    result = None
                if result:
                    return result
                time.sleep(0.2)
            pytest.fail(f"timed out waiting for {what}")

        wait("the API", lambda: http.get("/health").status_code == 200)
        wait("the runner's GPUs", lambda: http.get("/gpus").json()["total"] == 2)
        body = {
            "job_id": "dist-1",
            "data_path": "d#40",
            "model_path": "m",
            "gpu_count": 2,
            "train_args": {"save_steps": 5},
        }
        created = http.post("/jobs", json=body)
        assert created.status_code == 201, created.text
        wait("success", lambda: http.get("/jobs/dist-1/status").json()["status"] == "succeeded")
        job = http.get("/jobs/dist-1").json()
        assert job["last_runner_id"] == "gpu-host-1"
        assert job["checkpoints"]
        assert http.get("/jobs/dist-1/logs").json()["lines"]
        processed = http.post("/queue/process").json()
        assert processed["leader"], processed
        http.close()
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in processes.items():
            try:
                _, stderr = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                _, stderr = process.communicate()
            assert process.returncode == 0, f"{name}: {stderr[-2000:]}"
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()
