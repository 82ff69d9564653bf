"""The seed's whole workflow over real HTTP against ``swift-trainer up --simulate-gpus 2``.

One real process: embedded nats-server, SQLite event store, handler, relay, scheduler, a
local runner with two simulated GPUs driving the swift simulator, read models and the API.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from tests.e2e.live_service import Service, start_service, stop_service


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    process, base = start_service(tmp_path, "--simulate-step-seconds", "0.05")
    running = Service(process, base, tmp_path / "outputs")
    children = psutil.Process(process.pid).children(recursive=True)
    try:
        yield running
    finally:
        running.http.close()
        stderr = stop_service(process)
        assert process.returncode == 0, stderr[-3000:]
        for child in children:
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                assert "swift_trainer.runner.simulator" not in " ".join(child.cmdline()), (
                    "a training process outlived the service"
                )


def create(
    service: Service, job_id: str, *, steps: int, priority: int = 5, prefer: str | None = None
) -> dict[str, Any]:
    response = service.http.post(
        "/jobs",
        headers={"Prefer": prefer} if prefer else None,
        json={
            "job_id": job_id,
            "data_path": "AI-ModelScope/coco#20000",
            "model_path": "Qwen/Qwen2.5-VL-7B-Instruct",
            "output_dir": f"output/{job_id}",
            "priority": priority,
            "train_args": {"max_steps": steps, "save_steps": 10},
        },
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["job_id"] == job_id
    return body


def test_the_seed_workflow_end_to_end(service: Service) -> None:
    http = service.http
    assert http.get("/health").json()["status"] == "ok"
    gpus = service.wait_for(
        "two simulated GPUs",
        lambda: sum(len(r.get("gpus") or []) for r in http.get("/gpus").json()["runners"]) == 2,
    )
    assert gpus

    # Three one-GPU jobs on two GPUs: the third queues.
    first = create(service, "training_001", steps=2000, priority=9)
    second = create(service, "training_002", steps=2000, priority=5)
    # The create waits up to 1 s for the scheduler, so a free GPU may already be taken.
    assert {first["status"], second["status"]} <= {"queued", "scheduled", "running"}
    service.wait_status("training_001", "running")
    service.wait_status("training_002", "running")
    # Prefer: wait asks for the scheduler's answer rather than "pending" (issue 16).
    third = create(service, "training_003", steps=40, priority=1, prefer="wait=5")
    assert third["status"] == "queued"
    assert third["queue_position"] == 1
    assert third["queue_source"] == "scheduler"
    in_queue = service.wait_for(
        "the third job's queue status",
        lambda: (s := http.get("/queue/training_003/status").json())["position"] and s,
    )
    assert in_queue["position"] == 1
    queue = service.wait_for(
        "the scheduler's queue view",
        lambda: (q := http.get("/queue").json())["source"] == "scheduler" and q["entries"] and q,
    )
    assert [e["job_id"] for e in queue["entries"]] == ["training_003"]

    # Progress, logs, events of a running job.
    progress = service.wait_for(
        "progress",
        lambda: (p := http.get("/jobs/training_001/progress").json()).get("step") and p,
    )
    assert progress["max_steps"] == 2000
    assert progress["loss"] is not None
    service.wait_for(
        "a checkpoint",
        lambda: http.get("/jobs/training_001").json().get("last_checkpoint"),
    )
    logs = service.wait_for(
        "log lines", lambda: http.get("/jobs/training_001/logs?limit=50").json()["lines"]
    )
    assert len(logs) <= 50
    types = [e["type"] for e in http.get("/jobs/training_001/events?limit=100").json()["events"]]
    assert types[:4] == ["JobSubmitted", "JobQueued", "JobScheduled", "JobStarted"]
    assert "JobProgressed" in types
    assert "CheckpointSaved" in types

    # Stop one: it keeps its checkpoint and frees its GPU for the queued job.
    assert http.post("/jobs/training_001/stop").status_code == 200
    service.wait_status("training_001", "stopped")
    stopped = http.get("/jobs/training_001").json()
    assert stopped["last_checkpoint"]
    service.wait_status("training_003", "running", "succeeded")

    # Export the stopped job's adapter (merge LoRA); the artifact exists on disk.
    export = http.post("/jobs/training_001/export")
    assert export.status_code == 200, export.text
    artifact = service.wait_for(
        "the export",
        lambda: next(
            (
                x["artifact_path"]
                for x in http.get("/jobs/training_001").json()["exports"]
                if x.get("artifact_path")
            ),
            None,
        ),
    )
    assert Path(artifact).is_dir()

    # Pause the queue processor: a new job stays queued until it is resumed.
    assert http.post("/queue/processor/stop").status_code == 200
    assert http.get("/queue/processor/status").json()["paused"] is True
    service.wait_status("training_003", "succeeded")
    create(service, "training_004", steps=20)
    time.sleep(1.5)
    assert service.status("training_004") == "queued"
    assert http.post("/queue/processor/start").status_code == 200
    assert http.post("/queue/process").status_code == 200
    service.wait_status("training_004", "running", "succeeded")
    service.wait_status("training_004", "succeeded")

    # Delete one; finished jobs can be deleted, a running one cannot.
    assert http.delete("/jobs/training_002").status_code == 409
    assert http.delete("/jobs/training_001").status_code == 204
    assert http.get("/jobs/training_001").status_code == 404
    assert (
        http.get("/jobs/training_001")
        .headers["content-type"]
        .startswith("application/problem+json")
    )

    listing = http.get("/jobs").json()
    assert {j["job_id"] for j in listing["items"]} == {
        "training_002",
        "training_003",
        "training_004",
    }
    system = http.get("/system/status").json()
    assert system
    assert http.post("/jobs/training_002/stop").status_code == 200
    service.wait_status("training_002", "stopped")
