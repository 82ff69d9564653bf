"""Two users on one service: ``up --simulate-gpus 2 --auth required``, keys from ``keys create``.

alice uploads a dataset and trains on it; bob, a user of the same service, must not list,
read, delete or train on her file, must not see her job's id on the GPU view or in the
jobs' change feed, and gets only his own usage rows. The admin's usage report, the CLI's
CSV and the Prometheus counter name alice's GPU-hours. A file stored by the operator
(owner ``local``) is invisible to users until ``files chown`` gives it to one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .live_service import API, Service, issue_key, operator_cli, start_service, stop_service

LONG = {"data_path": "d#100000", "model_path": "m", "gpu_count": 1}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[Service, str]]:
    process, base = start_service(
        tmp_path, "--auth", "required", "--simulate-step-seconds", "0.05", "--stop-jobs-on-exit"
    )
    running = Service(process, base, tmp_path / "outputs")
    try:
        yield running, base
    finally:
        running.http.close()
        stderr = stop_service(process)
        assert process.returncode == 0, stderr[-3000:]


class Caller:
    def __init__(self, base: str, secret: str) -> None:
        self.secret = secret
        self.http = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {secret}"}, timeout=30
        )

    def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return self.http.request(method, path, json=body)


def feed_lines(base: str, secret: str, seconds: float, sink: list[str]) -> None:
    """Read the jobs' change feed for ``seconds`` (in a thread, while others act)."""
    headers = {"Authorization": f"Bearer {secret}"}
    timeout = httpx.Timeout(seconds, read=seconds)
    try:
        with httpx.stream(
            "GET", f"{base}{API}/jobs/changes/stream", headers=headers, timeout=timeout
        ) as response:
            sink.append(f"status {response.status_code}")
            for line in response.iter_lines():
                sink.append(line)  # noqa: PERF402 - lines read before the timeout stay
    except httpx.ReadTimeout:
        pass


def test_two_users_see_only_their_own_files_gpus_changes_and_usage(
    service: tuple[Service, str], tmp_path: Path
) -> None:
    running, base = service
    admin = Caller(base, issue_key(tmp_path, "ops", "admin"))
    alice = Caller(base, issue_key(tmp_path, "alice", "user"))
    bob = Caller(base, issue_key(tmp_path, "bob", "user"))
    try:
        _walk(running, base, tmp_path, admin, alice, bob)
    finally:
        for caller in (admin, alice, bob):
            caller.http.close()


def _walk(
    running: Service, base: str, tmp_path: Path, admin: Caller, alice: Caller, bob: Caller
) -> None:
    running.wait_for("two GPUs", lambda: admin.call("GET", f"{API}/gpus").json()["total"] == 2)

    # bob follows the change feed while alice works.
    feed: list[str] = []
    follower = threading.Thread(target=feed_lines, args=(base, bob.secret, 12.0, feed))
    follower.start()

    content = b"".join(
        json.dumps({"query": f"alice-q{i}", "response": f"r{i}"}).encode() + b"\n"
        for i in range(20)
    )
    uploaded = alice.http.post(
        "/v1/files", files={"file": ("alice.jsonl", content)}, data={"purpose": "fine-tune"}
    )
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]

    # Files: bob neither lists, reads, downloads, deletes nor trains on alice's file.
    assert file_id not in bob.call("GET", "/v1/files").text
    assert file_id in alice.call("GET", "/v1/files").text
    assert file_id in admin.call("GET", "/v1/files").text
    unknown = bob.call("GET", "/v1/files/file-000000000000000000000000")
    for method, path in (
        ("GET", f"/v1/files/{file_id}"),
        ("GET", f"/v1/files/{file_id}/content"),
        ("DELETE", f"/v1/files/{file_id}"),
    ):
        answer = bob.call(method, path)
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.json()["error"]["code"] == unknown.json()["error"]["code"]
        assert "alice-q" not in answer.text
    tuned = bob.call("POST", "/v1/fine_tuning/jobs", {"model": "m", "training_file": file_id})
    assert tuned.status_code == 400, tuned.text
    native = bob.call(
        "POST", f"{API}/jobs", {"training_file": file_id, "model_path": "m", "job_id": "bob-x"}
    )
    assert native.status_code == 422, native.text

    # alice trains on her file (the runner fetches it for her job) and runs a long job.
    made = alice.call(
        "POST",
        f"{API}/jobs",
        {"training_file": file_id, "model_path": "m", "job_id": "alice-tune"},
    )
    assert made.status_code == 201, made.text
    running.wait_for(
        "alice-tune to succeed",
        lambda: alice.call("GET", f"{API}/jobs/alice-tune/status").json()["status"] == "succeeded",
    )
    made = alice.call("POST", f"{API}/jobs", {**LONG, "job_id": "alice-long"})
    assert made.status_code == 201, made.text
    running.wait_for(
        "alice-long to run",
        lambda: alice.call("GET", f"{API}/jobs/alice-long/status").json()["status"] == "running",
    )

    # GPUs: bob sees a held GPU, not whose job holds it; alice and the admin see the id.
    gpus = bob.call("GET", f"{API}/gpus")
    assert gpus.status_code == 200
    assert "alice-long" not in gpus.text and gpus.json()["assigned"] == 1
    assert any(g["held"] for r in gpus.json()["runners"] for g in r["gpus"])
    assert "alice-long" in alice.call("GET", f"{API}/gpus").text
    assert "alice" not in bob.call("GET", f"{API}/system/status").text

    # Usage: the admin sees alice's row; bob only his own (none: he ran nothing).
    report = admin.call("GET", f"{API}/usage").json()
    rows = {r["group"]: r for r in report["rows"]}
    assert rows["alice"]["gpu_hours"] > 0 and rows["alice"]["jobs"] == {"succeeded": 1}
    assert bob.call("GET", f"{API}/usage").json()["rows"] == []
    assert [r["group"] for r in alice.call("GET", f"{API}/usage?group_by=day").json()["rows"]]
    csv_out = subprocess.run(
        [sys.executable, "-m", "swift_trainer.cli", "usage", "-o", "csv", "--url", base],
        env={**os.environ, "SWIFT_TRAINER_API_KEY": admin.secret},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert csv_out.splitlines()[0].startswith("group,gpu_hours,lost_gpu_hours")
    assert any(line.startswith("alice,") for line in csv_out.splitlines())

    # Prometheus: an admin scrapes the per-owner counter; a user key may not scrape.
    assert bob.call("GET", "/metrics").status_code == 403
    running.wait_for(
        "alice's GPU-seconds on /metrics",
        lambda: (
            'swift_trainer_gpu_seconds_total{owner="alice"}' in admin.call("GET", "/metrics").text
        ),
    )

    # The change feed bob followed never named alice's jobs.
    follower.join(timeout=30)
    assert feed and feed[0] == "status 200", feed[:3]
    assert not [line for line in feed if "alice" in line], feed

    # A file the operator stored (owner local) is an admin's until given to alice.
    dataset = tmp_path / "ops.jsonl"
    dataset.write_bytes(content)
    stored = json.loads(operator_cli(tmp_path, "upload", str(dataset)))
    assert stored.get("owner", "local") == "local"
    assert alice.call("GET", f"/v1/files/{stored['id']}").status_code == 404
    assert admin.call("GET", f"/v1/files/{stored['id']}").status_code == 200
    moved = json.loads(operator_cli(tmp_path, "files", "chown", stored["id"], "--to", "alice"))
    assert moved["files"] == [stored["id"]]
    assert alice.call("GET", f"/v1/files/{stored['id']}").status_code == 200
