"""``swift-trainer up`` as a real process: embedded NATS, handler, relay; Ctrl-C stops all."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from swift_trainer.bus.embedded import free_port


def _env(data_dir: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "EVENT_STORE", "REDIS"))
    }
    env["SWIFT_TRAINER_DATA_DIR"] = str(data_dir)
    env["APP_HOST"] = "127.0.0.1"
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "swift_trainer.cli", *args]


def test_up_runs_the_embedded_service_and_stops_it_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = _env(data_dir)
    up = subprocess.Popen(_cli("up", "--port", "0"), env=env, stderr=subprocess.PIPE, text=True)
    try:
        url_file = data_dir / "nats.url"
        deadline = time.monotonic() + 60
        while not url_file.exists() and time.monotonic() < deadline and up.poll() is None:
            time.sleep(0.1)
        assert url_file.exists(), "up never started its nats-server"
        children = psutil.Process(up.pid).children(recursive=True)
        assert any("nats-server" in child.name() for child in children)

        submit = subprocess.run(
            _cli(
                "operator",
                "submit",
                "--job-id",
                "cli-1",
                "--data-path",
                "d#10",
                "--model-path",
                "m",
            ),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert submit.returncode == 0, submit.stderr
        reply = json.loads(submit.stdout)
        assert reply["ok"] is True
        assert [e["type"] for e in reply["events"]] == ["JobSubmitted", "JobQueued"]
        assert "deprecated" not in submit.stderr

        # The old top-level name still works, and says which commands replace it.
        again = subprocess.run(
            _cli("submit", "--job-id", "cli-1", "--data-path", "d", "--model-path", "m"),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert again.returncode == 1
        assert json.loads(again.stdout)["error"]["code"] == "job_already_exists"
        assert "'swift-trainer submit' is deprecated" in again.stderr
        assert "swift-trainer operator submit" in again.stderr
    finally:
        up.send_signal(signal.SIGINT)
        try:
            _, stderr = up.communicate(timeout=30)
        finally:
            if up.poll() is None:
                up.kill()
                up.communicate()
    assert up.returncode == 0, stderr
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert (data_dir / "events.db").exists()


def _wait_for_url(up: subprocess.Popen[str], data_dir: Path) -> None:
    url_file = data_dir / "nats.url"
    deadline = time.monotonic() + 60
    while not url_file.exists() and time.monotonic() < deadline and up.poll() is None:
        time.sleep(0.1)
    assert url_file.exists(), "up never started its nats-server"


def _stop(up: subprocess.Popen[str]) -> None:
    if up.poll() is None:
        up.send_signal(signal.SIGINT)
        try:
            up.communicate(timeout=30)
        finally:
            if up.poll() is None:
                up.kill()
                up.communicate()


def test_kill_9_of_up_takes_its_nats_server_along_and_one_folder_has_one_server(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    env = _env(data_dir)
    first = subprocess.Popen(_cli("up", "--port", "0"), env=env, stderr=subprocess.PIPE, text=True)
    children: list[psutil.Process] = []
    try:
        _wait_for_url(first, data_dir)
        children = psutil.Process(first.pid).children(recursive=True)
        servers = [child for child in children if "nats-server" in child.name()]
        assert len(servers) == 1

        # A second up on the same folder is refused, naming the server that holds it.
        second = subprocess.run(
            _cli("up", "--port", "0"),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 2, second.stderr
        assert f"in use by nats-server pid {servers[0].pid}" in second.stderr
        assert servers[0].is_running()

        first.kill()  # kill -9: no clean-up code runs in up
        first.communicate(timeout=30)
        _, alive = psutil.wait_procs(servers, timeout=15)
        assert alive == [], "the embedded nats-server outlived up"
    finally:
        _stop(first)
        for child in children:  # whatever else up started, by pid
            if child.is_running():
                child.kill()

    # The folder is free again: a new up starts on the same data.
    (data_dir / "nats.url").unlink(missing_ok=True)
    third = subprocess.Popen(_cli("up", "--port", "0"), env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_url(third, data_dir)
        deadline = time.monotonic() + 60
        while True:  # until its command handler answers
            status = subprocess.run(
                _cli("start", "no-such-job"), env=env, capture_output=True, text=True, check=False
            )
            if "job_not_found" in status.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert "job_not_found" in status.stdout, status.stderr
    finally:
        _stop(third)
    assert third.returncode == 0


def test_ctrl_c_as_soon_as_up_answers_stops_it_in_order(tmp_path: Path) -> None:
    """The signal lands while ``up`` finishes starting (the HTTP API already answers)."""
    data_dir = tmp_path / "data"
    port = free_port()
    up = subprocess.Popen(
        _cli("up", "--port", str(port)), env=_env(data_dir), stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and up.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/training/health", timeout=1
                ).is_success:
                    break
            time.sleep(0.01)
        up.send_signal(signal.SIGINT)
        _, stderr = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
    assert up.returncode == 0, stderr[-3000:]
