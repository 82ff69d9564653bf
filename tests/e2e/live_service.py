"""A real ``swift-trainer up --simulate-gpus 2`` process for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from swift_trainer.bus.embedded import free_port

API = "/api/v1/training"


class Service:
    def __init__(self, process: subprocess.Popen[str], base_url: str, output_root: Path) -> None:
        self.process = process
        self.http = httpx.Client(base_url=base_url + API, timeout=30)
        self.output_root = output_root

    def wait_for(
        self,
        what: str,
        probe: Callable[[], Any],
        *,
        timeout: float = 60.0,
    ) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "the service died"
            last = probe()
            if last:
                return last
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}; last: {last!r}")

    def status(self, job_id: str) -> str:
        response = self.http.get(f"/jobs/{job_id}/status")
        assert response.status_code == 200, response.text
        status: str = response.json()["status"]
        return status

    def wait_status(self, job_id: str, *wanted: str, timeout: float = 60.0) -> None:
        self.wait_for(
            f"{job_id} in {wanted}", lambda: self.status(job_id) in wanted, timeout=timeout
        )


def start_service(
    data_dir: Path,
    *extra: str,
    env_extra: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "EVENT_STORE", "REDIS"))
    }
    env.update(
        SWIFT_TRAINER_DATA_DIR=str(data_dir),
        OUTPUT_ROOT=str(data_dir / "outputs"),
        APP_HOST="127.0.0.1",
        APP_PORT=str(port),
        LOG_LEVEL="WARNING",
    )
    env.update(env_extra or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "swift_trainer.cli", "up", "--simulate-gpus", "2", *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"swift-trainer up exited with {process.returncode}: {err[-3000:]}")
        try:
            if httpx.get(f"{base}{API}/health", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    _, err = process.communicate()
    pytest.fail(f"swift-trainer up did not serve HTTP within 120 s: {err[-3000:]}")


def stop_service(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"swift-trainer up did not stop on SIGINT: {stderr[-3000:]}")
    return stderr


def operator_cli(data_dir: Path, *args: str) -> str:
    """Run an operator command against the running ``up`` (found by its data folder), as
    an operator would: another process, over the service's own NATS."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NATS_", "EVENT_STORE", "REDIS", "API_", "APP_"))
    }
    env["SWIFT_TRAINER_DATA_DIR"] = str(data_dir)
    done = subprocess.run(
        [sys.executable, "-m", "swift_trainer.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def issue_key(data_dir: Path, owner: str, role: str) -> str:
    """A key made with ``swift-trainer keys create``; the secret is its last line."""
    made = operator_cli(data_dir, "keys", "create", "--owner", owner, "--role", role)
    return made.strip().splitlines()[-1]
