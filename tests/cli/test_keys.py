"""``keys`` and ``--auth`` against a real ``up`` process: the first admin key made on the
host over NATS, used over HTTP, listed without its secret, revoked."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _env(data_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NATS_", "EVENT_STORE", "REDIS", "API_", "APP_"))
    }
    env["SWIFT_TRAINER_DATA_DIR"] = str(data_dir)
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "swift_trainer.cli", *args]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cli(*args), env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_keys_against_a_running_up_with_auth_required(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = _env(data_dir)
    port = _free_port()
    up = subprocess.Popen(
        _cli("up", "--port", str(port), "--auth", "required"),
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and up.poll() is None:
            try:
                if httpx.get(f"{base}/api/v1/training/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert up.poll() is None, "up exited"

        assert httpx.get(f"{base}/api/v1/training/jobs").status_code == 401

        made = _run(env, "keys", "create", "--owner", "ops", "--role", "admin")
        assert made.returncode == 0, made.stderr
        secret = made.stdout.strip().splitlines()[-1]
        assert secret.startswith("stk_")
        key_id = re.search(r"key (\S+) issued", made.stdout)
        assert key_id is not None
        headers = {"Authorization": f"Bearer {secret}"}

        def status() -> int:
            return httpx.get(f"{base}/api/v1/training/jobs", headers=headers).status_code

        deadline = time.monotonic() + 5
        while status() != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status() == 200

        listed = _run(env, "keys", "list", "--output", "json")
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [(r["id"], r["owner"], r["role"]) for r in rows] == [(key_id[1], "ops", "admin")]
        assert rows[0]["last_used"] is not None
        assert secret not in listed.stdout

        revoked = _run(env, "keys", "revoke", key_id[1])
        assert revoked.returncode == 0, revoked.stderr
        deadline = time.monotonic() + 1
        while status() != 401:
            assert time.monotonic() < deadline, "revocation took more than a second"
            time.sleep(0.02)

        quota = _run(env, "quota", "set", "alice", "--max-queued-jobs", "2", "--max-gpus", "4")
        assert quota.returncode == 0, quota.stderr
        quotas = json.loads(_run(env, "quota", "list", "--output", "json").stdout)
        assert quotas == [{"owner": "alice", "max_gpus": 4, "max_queued_jobs": 2}]

        bad = _run(env, "keys", "create", "--owner", "x y", "--role", "user")
        assert bad.returncode == 2 and "error" in bad.stderr
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            try:
                up.communicate(timeout=30)
            finally:
                if up.poll() is None:
                    os.killpg(up.pid, signal.SIGKILL)
                    up.communicate()
    secret_file_text = "".join(p.read_text(errors="ignore") for p in data_dir.rglob("*.log"))
    assert secret not in secret_file_text


def test_binding_beyond_loopback_without_auth_is_refused(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    refused = _run(env, "up", "--host", "0.0.0.0", "--port", "0")
    assert refused.returncode == 2
    assert "insecure" in refused.stderr or "without authentication" in refused.stderr
