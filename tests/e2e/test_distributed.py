"""The distributed mode: handler, scheduler, runner and API as separate processes.

They share one nats-server (started here, as a deployment would run its own), one SQLite
event store file and Redis read models under a throwaway prefix, and find each other only
through those, as they would across hosts.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from tests.e2e.conftest import REDIS_URL, process_env, redis_prefix

from swift_trainer.bus.embedded import free_port

API = "/api/v1/training"


def test_separate_processes_run_a_job_end_to_end(tmp_path: Path, nats_url: str) -> None:
    prefix = redis_prefix("dist")
    port = free_port()
    env = process_env(
        tmp_path, nats_url=nats_url, redis_prefix=prefix, port=port, step_seconds=0.02
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

        def wait(what: str, probe: object, timeout: float = 120) -> object:
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
        ended: dict[str, str] = {}
        for name, process in processes.items():  # every pipe is read and closed first
            try:
                _, ended[name] = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                _, ended[name] = process.communicate()
        for name, process in processes.items():
            assert process.returncode == 0, f"{name}: {ended[name][-2000:]}"
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()
