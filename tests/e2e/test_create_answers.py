"""Right answers at create time, against the real processes (issue 16, item 3).

Handler, scheduler, a runner simulating two GPUs and the API run as separate processes, as
in a deployment. Four one-GPU jobs created in a row on the two free GPUs must never be told
a guessed position: each answer is the scheduler's (placed at once, or a queue position
that matches the queue) or says it is pending; and ``GET /queue`` lists every job still
queued as soon as its create has returned.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from tests.e2e.conftest import REDIS_URL, process_env, redis_prefix

from swift_trainer.bus.embedded import free_port

API = "/api/v1/training"
#: Long enough that no job finishes while the four creates are checked.
BODY = {"data_path": "d#100000", "model_path": "m", "gpu_count": 1}


@pytest.fixture
def api(tmp_path: Path, nats_url: str) -> Iterator[httpx.Client]:
    prefix = redis_prefix("create")
    port = free_port()
    env = process_env(
        tmp_path, nats_url=nats_url, redis_prefix=prefix, port=port, step_seconds=0.05
    )
    parts = {
        "handler": ["handler"],
        "scheduler": ["scheduler"],
        # Its jobs train far longer than the test: stop them with the runner.
        "runner": [
            "runner",
            "--runner-id",
            "gpu-host-1",
            "--simulate-gpus",
            "2",
            "--stop-jobs-on-exit",
        ],
        "api": ["api"],
    }
    processes: dict[str, subprocess.Popen[str]] = {}
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}{API}", timeout=30)
    try:
        for name, args in parts.items():
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", "swift_trainer.cli", *args],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        deadline = time.monotonic() + 120  # four processes start on a busy machine
        last: object = None
        while True:
            for name, process in processes.items():
                assert process.poll() is None, f"{name} died: {process.communicate()[1][-2000:]}"
            # A pass on request publishes the first queue view: from then on the
            # scheduler's word is what a create is told.
            try:
                gpus = http.get("/gpus").json().get("total")
                processed = http.post("/queue/process").json()
                computed_at = http.get("/queue").json().get("computed_at")
            except (httpx.HTTPError, ValueError) as exc:
                last = repr(exc)
            else:
                last = (gpus, processed, computed_at)
                if gpus == 2 and processed.get("processed") and computed_at:
                    break
            assert time.monotonic() < deadline, f"the services did not come up in 120 s: {last}"
            time.sleep(0.2)
        yield http
    finally:
        http.close()
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()


def _listed(queue: dict[str, Any]) -> dict[str, int | None]:
    """Every queued job ``GET /queue`` shows: ranked ones with their position, pending None."""
    shown: dict[str, int | None] = {e["job_id"]: e["position"] for e in queue["entries"]}
    shown.update({e["job_id"]: None for e in queue["pending"]})
    return shown


def test_four_creates_on_two_free_gpus_answer_without_guessing(api: httpx.Client) -> None:
    answers = []
    for n in range(4):
        created = api.post("/jobs", json={**BODY, "job_id": f"four-{n}"})
        assert created.status_code == 201, created.text
        answer = created.json()
        answers.append(answer)
        job_id = answer["job_id"]
        if answer["status"] == "queued":
            # Listed at once, and a position shown is the queue's own.
            shown = _listed(api.get("/queue").json())
            assert job_id in shown, f"{job_id} missing from GET /queue right after its create"
            if "queue_position" in answer:
                assert answer["queue_source"] == "scheduler"
            else:
                assert answer["queue_source"] in {"scheduler_pending", "scheduler_placing"}
        else:
            assert answer["status"] in {"scheduled", "running"}, answer
            assert "queue_position" not in answer
    positions = [a["queue_position"] for a in answers if "queue_position" in a]
    assert len(positions) == len(set(positions)), f"two jobs told the same position: {answers}"

    # Once settled: two jobs hold the two GPUs, the other two wait at positions 1 and 2.
    deadline = time.monotonic() + 30
    while True:
        statuses = {a["job_id"]: api.get(f"/jobs/{a['job_id']}/status").json() for a in answers}
        started = [j for j, s in statuses.items() if s["status"] in {"scheduled", "running"}]
        queue = api.get("/queue").json()
        if len(started) == 2 and sorted(e["position"] for e in queue["entries"]) == [1, 2]:
            break
        assert time.monotonic() < deadline, (statuses, queue)
        time.sleep(0.1)
    assert not queue["pending"]
    assert {e["job_id"] for e in queue["entries"]} | set(started) == {a["job_id"] for a in answers}


def test_prefer_wait_gives_the_scheduler_answer(api: httpx.Client) -> None:
    answers = []
    for n in range(4):
        created = api.post(
            "/jobs", json={**BODY, "job_id": f"wait-{n}"}, headers={"Prefer": "wait=3"}
        )
        assert created.status_code == 201, created.text
        answers.append(created.json())
    placed = [a for a in answers if a["status"] != "queued" or a["queue_source"] != "scheduler"]
    ranked = [a for a in answers if a["status"] == "queued" and a["queue_source"] == "scheduler"]
    # The first two find free GPUs (placed at once, or being placed), the last two are
    # told the scheduler's positions, 1 and 2, not a guess.
    assert [a["job_id"] for a in placed] == ["wait-0", "wait-1"], answers
    assert [a["queue_position"] for a in ranked] == [1, 2], answers
