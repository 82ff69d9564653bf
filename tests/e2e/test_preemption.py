"""Preemption and time limits over real HTTP against ``swift-trainer up --simulate-gpus 2``.

Two long priority-2 jobs hold both GPUs; a priority-9 job needing both is submitted. The
victims stop with a checkpoint, the urgent job runs within the grace plus 10 s, and the
victims come back from their checkpoint (not step 0) and succeed. A ``preemptible: false``
job is never touched, and a job with ``max_runtime: 5`` ends ``timed_out``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.live_service import Service, start_service, stop_service

GRACE_S = 15
STEP_S = "0.02"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    process, base = start_service(
        tmp_path,
        "--simulate-step-seconds",
        STEP_S,
        "--preemption",
        "on",
        env_extra={"PREEMPT_MIN_RUNTIME_S": "0", "PREEMPT_GRACE_S": str(GRACE_S)},
    )
    running = Service(process, base, tmp_path / "outputs")
    try:
        yield running
    finally:
        running.http.close()
        stderr = stop_service(process)
        assert process.returncode == 0, stderr[-3000:]


def create(service: Service, job_id: str, *, steps: int, priority: int, **extra: Any) -> None:
    response = service.http.post(
        "/jobs",
        json={
            "job_id": job_id,
            "data_path": "AI-ModelScope/coco#20000",
            "model_path": "Qwen/Qwen2.5-VL-7B-Instruct",
            "output_dir": f"output/{job_id}",
            "priority": priority,
            "train_args": {"max_steps": steps, "save_steps": 25},
            **extra,
        },
    )
    assert response.status_code == 201, response.text


def events(service: Service, job_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = service.http.get(f"/jobs/{job_id}/events?limit=500").json()[
        "events"
    ]
    return found


def checkpoint_step(service: Service, job_id: str) -> int:
    checkpoint = service.http.get(f"/jobs/{job_id}").json().get("last_checkpoint")
    return int(checkpoint["step"]) if checkpoint else 0


def test_an_urgent_job_preempts_two_low_priority_ones_that_resume_from_their_checkpoints(
    service: Service,
) -> None:
    http = service.http
    create(service, "low_a", steps=1500, priority=2)
    create(service, "low_b", steps=1500, priority=2)
    for job_id in ("low_a", "low_b"):
        service.wait_status(job_id, "running")
        service.wait_for(f"a checkpoint of {job_id}", lambda j=job_id: checkpoint_step(service, j))

    create(service, "urgent", steps=40, priority=9, gpu_count=2)
    service.wait_status("urgent", "running", "succeeded", timeout=GRACE_S + 10)

    for job_id in ("low_a", "low_b"):
        history = events(service, job_id)
        types = [e["type"] for e in history]
        assert "JobPreempted" in types, types
        stop = next(e for e in history if e["type"] == "StopRequested")
        assert stop["data"]["intent"] == "preempt"
        assert stop["data"]["reason"].startswith("preempted by urgent (priority 9 > 2) on host")
        preempted = next(e for e in history if e["type"] == "JobPreempted")
        requeued = types[types.index("JobPreempted") + 1]
        assert requeued == "JobRequeued", "a victim goes back to the queue"
        assert preempted["data"]["checkpoint"], "it stopped with a checkpoint"
        summary = http.get(f"/jobs/{job_id}").json()
        assert summary["preemptions"] == 1
        assert summary["retries"] == 0, "a preemption spends no retry"

    # /v1 tells the victim's story in its events (and shows it queued meanwhile).
    v1 = service.http.base_url.copy_with(path="/v1/fine_tuning/jobs/low_a/events")
    answer = service.http.get(v1, params={"limit": 100})
    assert answer.status_code == 200, answer.text
    messages = [x["message"] for x in answer.json()["data"]]
    assert any("preempted by urgent" in m for m in messages), messages

    service.wait_status("urgent", "succeeded", timeout=60)
    for job_id in ("low_a", "low_b"):
        service.wait_status(job_id, "succeeded", timeout=120)
        history = events(service, job_id)
        resumed = [e for e in history if e["type"] == "JobScheduled"][1]
        saved = next(e for e in history if e["type"] == "JobPreempted")["data"]["checkpoint"]
        assert resumed["data"]["resume_from"] == saved
        attempt = resumed["data"]["attempt"]
        steps = [
            e["data"]["step"]
            for e in history
            if e["type"] == "JobProgressed" and e["data"]["attempt"] == attempt
        ]
        step_saved = int(saved.rstrip("/").rsplit("-", 1)[-1])
        assert steps and min(steps) > step_saved > 0, "it resumed from its checkpoint step"


def test_a_job_that_is_not_preemptible_is_never_touched(service: Service) -> None:
    create(service, "steady", steps=3000, priority=1, preemptible=False)
    create(service, "other", steps=3000, priority=1)
    service.wait_status("steady", "running")
    service.wait_status("other", "running")
    service.wait_for("a checkpoint", lambda: checkpoint_step(service, "steady"))
    create(service, "urgent", steps=20, priority=9, gpu_count=2)
    create(service, "urgent_one", steps=20, priority=9)
    # The one-GPU job takes the preemptible job's GPU; the two-GPU one can preempt no one.
    service.wait_status("urgent_one", "running", "succeeded", timeout=GRACE_S + 10)
    assert service.http.post("/queue/process").status_code == 200
    assert service.status("steady") == "running"
    assert "StopRequested" not in [e["type"] for e in events(service, "steady")]
    assert service.status("urgent") == "queued"
    for job_id in ("steady", "urgent", "other"):
        service.http.post(f"/jobs/{job_id}/cancel")


def test_a_job_reaches_its_max_runtime_and_ends_timed_out(service: Service) -> None:
    create(service, "limited", steps=5000, priority=5, max_runtime=5)
    service.wait_status("limited", "timed_out", timeout=60)
    summary = service.http.get("/jobs/limited").json()
    assert "max_runtime" in summary["stop_reason"]
    assert summary["last_checkpoint"], "it stopped with a checkpoint"
    assert [e["type"] for e in events(service, "limited")][-1] == "JobTimedOut"
    # Started again, it resumes from its checkpoint with a fresh limit.
    assert service.http.post("/jobs/limited/start").status_code == 200
    service.wait_status("limited", "running", timeout=30)
    service.wait_status("limited", "timed_out", timeout=60)
