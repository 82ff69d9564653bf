"""Failures end to end on ``up --simulate-gpus 2``: classified, and retried by cause."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.live_service import API, Service, start_service, stop_service


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    process, base = start_service(tmp_path, "--simulate-step-seconds", "0.05")
    running = Service(process, base, tmp_path / "outputs")
    try:
        running.wait_for(
            "two simulated GPUs",
            lambda: (
                sum(len(r.get("gpus") or []) for r in running.http.get("/gpus").json()["runners"])
                == 2
            ),
        )
        yield running
    finally:
        running.http.close()
        stderr = stop_service(process)
        assert process.returncode == 0, stderr[-3000:]


def submit(service: Service, job_id: str, labels: dict[str, str], **train: Any) -> None:
    response = service.http.post(
        "/jobs",
        json={
            "job_id": job_id,
            "data_path": "AI-ModelScope/coco#20000",
            "model_path": "Qwen/Qwen2.5-VL-7B-Instruct",
            "output_dir": f"output/{job_id}",
            "train_args": {"max_steps": 12, "save_steps": 4, **train},
            "labels": labels,
        },
    )
    assert response.status_code == 201, response.text


def events(service: Service, job_id: str) -> list[dict[str, Any]]:
    body = service.http.get(f"/jobs/{job_id}/events?limit=200").json()
    found: list[dict[str, Any]] = body["events"]
    return found


def commands(service: Service, job_id: str) -> list[list[str]]:
    return [e["data"]["command"] for e in events(service, job_id) if e["type"] == "JobStarted"]


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_an_oom_succeeds_on_its_retry_with_the_halved_batch(service: Service) -> None:
    submit(service, "oom1", {"sim.fail": "oom", "sim.fail_at_step": "2"}, batch_size=4)
    service.wait_status("oom1", "succeeded", "failed", timeout=120)
    job = service.http.get("/jobs/oom1").json()
    assert job["status"] == "succeeded", job
    assert job["failure"]["kind"] == "oom"
    assert "CUDA out of memory" in job["failure"]["log_line"]
    assert job["retry_train_args"]["batch_size"] == 2
    first, second = commands(service, "oom1")
    assert flag(first, "--per_device_train_batch_size") == "4"
    assert flag(second, "--per_device_train_batch_size") == "2"
    assert flag(second, "--gradient_accumulation_steps") == str(
        2 * int(flag(first, "--gradient_accumulation_steps"))
    )
    (requeued,) = [e for e in events(service, "oom1") if e["type"] == "JobRequeued"]
    assert "batch_size 4 -> 2" in requeued["data"]["reason"]


def test_a_data_error_fails_at_once_with_its_kind_and_line(service: Service) -> None:
    submit(service, "data1", {"sim.fail": "data_error"})
    service.wait_status("data1", "failed", timeout=120)
    job = service.http.get("/jobs/data1").json()
    assert job["attempt"] == 1
    assert job["failure"]["kind"] == "data_error"
    assert "The local path does not exist" in job["failure"]["log_line"]
    assert "not retried" in job["failure_reason"]
    assert "JobRequeued" not in [e["type"] for e in events(service, "data1")]


def test_an_xid_gpu_leaves_placement_and_the_job_finishes_on_the_other(service: Service) -> None:
    submit(service, "xid1", {"sim.fail": "xid", "sim.fail_at_step": "2"})
    service.wait_status("xid1", "succeeded", "failed", timeout=120)
    job = service.http.get("/jobs/xid1").json()
    assert job["status"] == "succeeded", job
    assert job["failure"]["kind"] == "gpu_fault"
    faulty = job["excluded_gpus"]
    assert len(faulty) == 1
    scheduled = [e["data"] for e in events(service, "xid1") if e["type"] == "JobScheduled"]
    assert scheduled[0]["gpu_uuids"] == faulty
    assert faulty[0] not in scheduled[-1]["gpu_uuids"]
    # The card itself reports the Xid: placement keeps every job off it.
    gpus = [g for r in service.http.get("/gpus").json()["runners"] for g in r["gpus"]]
    sick = next(g for g in gpus if g["uuid"] == faulty[0])
    assert sick["health"].get("xid_events"), sick


def test_checkpoints_rotated_out_are_no_longer_offered(service: Service) -> None:
    submit(service, "rot1", {}, save_total_limit=2, save_steps=2)
    service.wait_status("rot1", "succeeded", timeout=120)
    job = service.wait_for(
        "the rotated checkpoints recorded as removed",
        lambda: len((j := service.http.get("/jobs/rot1").json())["checkpoints"]) == 2 and j,
    )
    assert [c["step"] for c in job["checkpoints"]] == [10, 12]
    kinds = [e["type"] for e in events(service, "rot1")]
    assert kinds.count("CheckpointRemoved") == 4
    refused = service.http.post("/jobs/rot1/export", json={"checkpoint": "checkpoint-2"})
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "checkpoint_missing"


def only_runner(service: Service) -> str:
    runners = service.http.get("/runners").json()["runners"]
    assert len(runners) == 1, runners
    runner_id: str = runners[0]["runner_id"]
    return runner_id


def test_a_drained_runner_gets_no_new_jobs_until_undrained(service: Service) -> None:
    runner = only_runner(service)
    drained = service.http.post(f"/runners/{runner}/drain", json={"reason": "DIMM swap"})
    assert drained.status_code == 200, drained.text
    assert drained.json()["changed"] is True
    shown = service.wait_for(
        "the drain in the runner list",
        lambda: (r := service.http.get("/runners").json()["runners"][0])["drained"] and r,
    )
    assert shown["drain_reason"] == "DIMM swap"
    submit(service, "held1", {})
    # The scheduler has seen the job and left it waiting: the queue view lists it.
    service.wait_for(
        "the scheduler's queue view of held1",
        lambda: any(
            e["job_id"] == "held1" for e in service.http.get("/queue").json().get("entries", [])
        ),
    )
    assert service.status("held1") == "queued"
    undrained = service.http.post(f"/runners/{runner}/undrain", json={"reason": "done"})
    assert undrained.json()["changed"] is True
    service.wait_status("held1", "running", "succeeded")


def test_drain_now_requeues_running_jobs_with_the_reason(service: Service) -> None:
    runner = only_runner(service)
    submit(service, "long1", {}, max_steps=4000, save_steps=10)
    service.wait_status("long1", "running")
    now = service.http.post(f"/runners/{runner}/drain", json={"reason": "reboot", "now": True})
    assert now.status_code == 200, now.text
    requeued = service.wait_for(
        "the requeue",
        lambda: [e for e in events(service, "long1") if e["type"] == "JobRequeued"],
    )
    assert f"runner {runner} drained: reboot" in requeued[0]["data"]["reason"]
    assert service.status("long1") == "queued"
    service.http.post(f"/runners/{runner}/undrain", json={})
    service.wait_status("long1", "running")
    assert service.http.post("/jobs/long1/cancel").status_code == 200


def test_an_xid_is_recorded_as_a_gpu_health_change(service: Service) -> None:
    submit(service, "xid2", {"sim.fail": "xid"})
    service.wait_status("xid2", "succeeded", "failed", timeout=120)
    runners = service.wait_for(
        "the unhealthy GPU in the runner list",
        lambda: (
            (r := service.http.get("/runners").json()["runners"])
            and any(not g["healthy"] for g in r[0]["gpus"])
            and r
        ),
    )
    sick = [g for g in runners[0]["gpus"] if not g["healthy"]]
    assert [g["reasons"] for g in sick] == [["Xid 79"]]
    assert sick[0]["unhealthy_since"] is not None
    gpus = [g for r in service.http.get("/gpus").json()["runners"] for g in r["gpus"]]
    assert [g["health_problems"] for g in gpus if g["health_problems"]] == [["Xid 79"]]
    root = str(service.http.base_url).removesuffix("/").removesuffix(API)
    line = service.wait_for(
        "the unhealthy GPU in /metrics",
        lambda: next(
            (
                x
                for x in httpx.get(root + "/metrics").text.splitlines()
                if x.startswith("swift_trainer_gpu_unhealthy{")
            ),
            None,
        ),
    )
    assert 'reason="Xid 79"' in line


def test_a_resume_that_hangs_is_flagged_resume_stalled(tmp_path: Path) -> None:
    process, base = start_service(
        tmp_path, "--simulate-step-seconds", "0.05", env_extra={"RESUME_CHECK_S": "2"}
    )
    service = Service(process, base, tmp_path / "outputs")
    try:
        labels = {"sim.fail": "hang", "sim.fail_attempt": "2"}
        submit(service, "res1", labels, max_steps=4000, save_steps=5)
        service.wait_for(
            "a checkpoint", lambda: service.http.get("/jobs/res1").json()["checkpoints"]
        )
        assert service.http.post("/jobs/res1/stop").status_code == 200
        service.wait_status("res1", "stopped")
        assert service.http.post("/jobs/res1/start").status_code == 200
        warned = service.wait_for(
            "the resume_stalled warning",
            lambda: (j := service.http.get("/jobs/res1").json())["warnings"] and j,
            timeout=90,
        )
        (warning,) = warned["warnings"]
        assert (warning["kind"], warning["attempt"]) == ("resume_stalled", 2)
        assert "resumed from checkpoint step" in warning["reason"]
        kinds = [
            e["data"].get("warning") for e in events(service, "res1") if e["type"] == "JobWarned"
        ]
        assert kinds == ["resume_stalled"]
        assert service.http.post("/jobs/res1/cancel").status_code == 200
        service.wait_status("res1", "cancelled")
    finally:
        service.http.close()
        stderr = stop_service(process)
        assert process.returncode == 0, stderr[-3000:]
