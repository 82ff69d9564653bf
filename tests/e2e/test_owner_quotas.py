"""Owners' GPU quotas and fair share end to end: ``up --simulate-gpus 2 --auth required``,
two users' keys and the quota made with the ``keys`` and ``quota`` commands, jobs over HTTP.

1. ``ann`` may use one GPU: of her two jobs one runs, the other waits (``owner_gpu_quota``)
   while ``bob``'s job runs on the second GPU, and keeps waiting when that GPU is free
   again; it starts when her first job ends.
2. The quota lifted, ``ann`` holds both GPUs; her older job and a newer one of ``bob``
   wait at equal priority; when one of her jobs ends, ``bob``'s starts first (fair share).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .live_service import Service, operator_cli, start_service, stop_service

#: Long enough to outlive the test: only stops end these trainings.
LONG = {"data_path": "d#100000", "model_path": "m", "gpu_count": 1}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    # Its jobs train far longer than the test: stop them with the service, even on failure.
    process, base = start_service(
        tmp_path, "--auth", "required", "--simulate-step-seconds", "0.05", "--stop-jobs-on-exit"
    )
    running = Service(process, base, tmp_path / "outputs")
    try:
        yield running
    finally:
        running.http.close()
        stderr = stop_service(process)
        assert process.returncode == 0, stderr[-3000:]


class User:
    def __init__(self, service: Service, secret: str) -> None:
        self.service = service
        self.headers = {"Authorization": f"Bearer {secret}"}

    def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return self.service.http.request(method, path, json=body, headers=self.headers)

    def submit(self, job_id: str) -> None:
        response = self.call("POST", "/jobs", {**LONG, "job_id": job_id})
        assert response.status_code == 201, response.text

    def status(self, job_id: str) -> str:
        response = self.call("GET", f"/jobs/{job_id}/status")
        assert response.status_code == 200, response.text
        status: str = response.json()["status"]
        return status

    def wait_status(self, job_id: str, *wanted: str, timeout: float = 60.0) -> None:
        self.service.wait_for(
            f"{job_id} in {wanted}", lambda: self.status(job_id) in wanted, timeout=timeout
        )

    def stop(self, job_id: str) -> None:
        response = self.call("POST", f"/jobs/{job_id}/stop", {"reason": "test"})
        assert response.status_code in (200, 202), response.text
        self.wait_status(job_id, "stopped")

    def queue(self) -> list[dict[str, Any]]:
        response = self.call("GET", "/queue")
        assert response.status_code == 200, response.text
        entries: list[dict[str, Any]] = response.json()["entries"]
        return entries


def user(service: Service, data_dir: Path, owner: str) -> User:
    secret = operator_cli(
        data_dir, "keys", "create", "--owner", owner, "--role", "user"
    ).splitlines()[-1]
    assert secret.startswith("stk_")
    made = User(service, secret)
    service.wait_for(f"{owner}'s key", lambda: made.call("GET", "/jobs").status_code == 200)
    return made


def queued(user: User, job_id: str) -> bool:
    """The scheduler's queue view (what ``GET /queue`` shows) holds the job."""
    return any(entry["job_id"] == job_id for entry in user.queue())


def stays(user: User, job_id: str, status: str, seconds: float) -> None:
    """The job keeps ``status`` for ``seconds``: several scheduler passes (ticks of 1 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert user.status(job_id) == status
        time.sleep(0.2)


def test_a_quota_holds_one_owner_and_fair_share_orders_equal_priorities(
    service: Service, tmp_path: Path
) -> None:
    ann, bob = user(service, tmp_path, "ann"), user(service, tmp_path, "bob")
    # The quota's event precedes the jobs' in the log, and the scheduler applies the log
    # in order: it knows the quota before it sees ann's jobs.
    operator_cli(tmp_path, "quota", "set", "ann", "--max-gpus", "1")

    # 1. ann at her limit waits; bob's job takes the second GPU.
    ann.submit("ann-1")
    ann.wait_status("ann-1", "running")
    ann.submit("ann-2")
    bob.submit("bob-1")
    bob.wait_status("bob-1", "running")
    assert ann.status("ann-2") == "queued"

    def ann_2_blocked() -> dict[str, Any] | None:
        mine = [e for e in ann.queue() if e["job_id"] == "ann-2"]
        return mine[0] if mine and mine[0]["blocked_by"] == "owner_gpu_quota" else None

    entry = service.wait_for("ann-2 blocked by the quota in the queue", ann_2_blocked)
    assert entry["gpu_count"] == 1
    assert "max_gpus 1" in entry["blocked_reason"]
    [seen_by_bob] = bob.queue()
    assert seen_by_bob["job_id"] is None and seen_by_bob["blocked_reason"] is None
    assert (seen_by_bob["blocked_by"], seen_by_bob["gpu_count"]) == ("owner_gpu_quota", 1)

    bob.stop("bob-1")  # a GPU is free, but not for ann
    stays(ann, "ann-2", "queued", 3.0)
    ann.stop("ann-1")  # her GPU is back: ann-2 starts
    ann.wait_status("ann-2", "running")

    # 2. Fair share: with the quota lifted ann holds both GPUs; her older job and bob's
    # newer one wait; the next free GPU goes to bob, who has none.
    operator_cli(tmp_path, "quota", "set", "ann")
    ann.submit("ann-3")
    ann.wait_status("ann-3", "running")
    ann.submit("ann-4")
    # The scheduler has queued ann-4 before bob-2 exists: ann-4 is the older of the two.
    service.wait_for("ann-4 in the scheduler's queue", lambda: queued(ann, "ann-4"))
    bob.submit("bob-2")
    stays(bob, "bob-2", "queued", 1.5)
    assert ann.status("ann-4") == "queued"
    ann.stop("ann-3")
    bob.wait_status("bob-2", "running")
    stays(ann, "ann-4", "queued", 2.0)

    for who, job_id in ((ann, "ann-2"), (bob, "bob-2")):
        who.stop(job_id)
    ann.wait_status("ann-4", "running")
    ann.stop("ann-4")
