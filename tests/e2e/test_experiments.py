"""Sweeps and dependencies end to end, over HTTP against ``swift-trainer up --simulate-gpus 2``."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.live_service import API, Service, start_service, stop_service
from tests.runner.mlflow_rest import mlflow_rest_server

from swift_trainer.bus.embedded import free_port
from swift_trainer.cli import main

BASE = {
    "data_path": "AI-ModelScope/coco#200",
    "model_path": "Qwen/Qwen2.5-VL-7B-Instruct",
    "output_dir": "output/exp",
    "train_args": {"max_steps": 20, "save_steps": 10, "logging_steps": 5},
}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    process, base = start_service(tmp_path, "--simulate-step-seconds", "0.02")
    running = Service(process, base, tmp_path / "outputs")
    try:
        yield running
    finally:
        running.http.close()
        stderr = stop_service(process)
        assert process.returncode == 0, stderr[-3000:]


def test_b_after_a_runs_only_once_a_succeeds(service: Service) -> None:
    http = service.http
    a = http.post("/jobs", json={**BASE, "job_id": "a", "train_args": {"max_steps": 60}})
    assert a.status_code == 201, a.text
    b = http.post("/jobs", json={**BASE, "job_id": "b", "after": [{"job": "a"}]})
    assert b.status_code == 201, b.text
    assert b.json()["status"] == "waiting"
    assert "a succeeded" in b.json()["message"]
    shown = http.get("/jobs/b").json()
    assert shown["status"] == "waiting" and shown["after"] == [{"job": "a", "on": "succeeded"}]
    # B read first, then A: while A has not succeeded, B was seen before that and waited.
    seen_b: set[str] = set()

    def a_done() -> bool:
        b_status = service.status("b")
        if service.status("a") == "succeeded":
            return True
        seen_b.add(b_status)
        return False

    service.wait_for("a to succeed", a_done)
    assert seen_b == {"waiting"}, seen_b
    service.wait_status("b", "succeeded")
    b_job, a_job = http.get("/jobs/b").json(), http.get("/jobs/a").json()
    assert b_job["started_at"] > a_job["finished_at"]

    # Unknown ids and cycles are refused at submission.
    unknown = http.post("/jobs", json={**BASE, "job_id": "c", "after": [{"job": "nope"}]})
    assert unknown.status_code == 422 and "nope" in unknown.json()["detail"]
    self_wait = http.post("/jobs", json={**BASE, "job_id": "d", "after": [{"job": "d"}]})
    assert self_wait.status_code == 422


def test_a_six_trial_grid_with_max_parallel_two_runs_to_its_end(service: Service) -> None:
    http = service.http
    created = http.post(
        "/sweeps",
        json={
            "sweep_id": "lr-grid",
            "name": "learning rate",
            "base": BASE,
            "parameters": {
                "train_args.learning_rate": {"values": [1e-5, 3e-5, 1e-4]},
                "train_args.lora_rank": {"values": [8, 16]},
            },
            "method": "grid",
            "max_parallel": 2,
            "metric": "loss",
            "goal": "minimize",
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["trials_total"] == 6
    most_under_way = 0

    def finished() -> dict[str, Any] | None:
        nonlocal most_under_way
        view: dict[str, Any] = http.get("/sweeps/lr-grid").json()
        counts = view["counts"]
        under_way = sum(counts.get(s, 0) for s in ("queued", "scheduled", "running", "stopping"))
        most_under_way = max(most_under_way, under_way)
        return view if view["status"] == "finished" else None

    view = service.wait_for("the sweep to finish", finished, timeout=180)
    assert most_under_way <= 2
    assert view["percent_done"] == 100.0
    assert view["counts"] == {"succeeded": 6}
    trials = view["trials"]
    best = min(trials, key=lambda t: t["metric"])
    assert view["best"]["job_id"] == best["job_id"]
    assert view["best"]["params"] == best["params"]
    jobs = http.get("/jobs", params={"label": "sweep=lr-grid"}).json()
    assert len(jobs["items"]) == 6
    listed = http.get("/sweeps").json()["sweeps"]
    assert [s["sweep_id"] for s in listed] == ["lr-grid"]
    rows = list(csv.DictReader(io.StringIO(http.get("/sweeps/lr-grid/results.csv").text)))
    assert len(rows) == 6
    assert {r["train_args.lora_rank"] for r in rows} == {"8", "16"}
    assert http.get("/sweeps/none").status_code == 404


def test_evaluation_after_training_shows_and_ranks_a_sweep(service: Service) -> None:
    """A job with ``eval`` shows its scores; a sweep ranked by an eval score names the
    trial with the highest."""
    http = service.http
    job = {**BASE, "job_id": "evaluated", "eval": {"datasets": ["gsm8k", "arc"], "limit": 5}}
    assert http.post("/jobs", json=job).status_code == 201
    service.wait_status("evaluated", "succeeded")
    shown = http.get("/jobs/evaluated").json()
    assert set(shown["eval_results"]) == {"gsm8k", "arc"}
    assert "eval_error" not in shown or shown["eval_error"] is None
    created = http.post(
        "/sweeps",
        json={
            "sweep_id": "by-score",
            "name": "rank by gsm8k",
            "base": {**BASE, "eval": {"datasets": ["gsm8k"]}},
            "parameters": {"train_args.lora_rank": {"values": [4, 8, 16]}},
            "max_parallel": 2,
            "metric": "eval:gsm8k",
            "goal": "maximize",
        },
    )
    assert created.status_code == 201, created.text
    view = service.wait_for(
        "the sweep to finish",
        lambda: (v := http.get("/sweeps/by-score").json())["status"] == "finished" and v,
        timeout=120,
    )
    scores = {t["job_id"]: t["metric"] for t in view["trials"]}
    assert all(isinstance(s, float) for s in scores.values()), scores
    assert view["best"]["metric"] == max(scores.values())


def test_an_unreachable_tracker_leaves_training_running_with_a_warning(tmp_path: Path) -> None:
    closed = free_port()
    process, base = start_service(
        tmp_path,
        "--simulate-step-seconds",
        "0.02",
        env_extra={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed}"},
    )
    service = Service(process, base, tmp_path / "outputs")
    try:
        job = {
            **BASE,
            "job_id": "tracked",
            "train_args": {"max_steps": 20, "report_to": ["tensorboard", "mlflow"]},
        }
        assert service.http.post("/jobs", json=job).status_code == 201
        service.wait_status("tracked", "succeeded")
        shown = service.http.get("/jobs/tracked").json()
        [warning] = shown["start_warnings"]
        assert warning.startswith(f"mlflow: 127.0.0.1:{closed} cannot be reached")
        assert "MLFLOW_TRACKING_URI" not in " ".join(shown.get("command") or [])
    finally:
        service.http.close()
        stderr = stop_service(process)
        assert process.returncode == 0, stderr[-3000:]


def test_a_job_page_links_the_mlflow_run_the_runner_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with mlflow_rest_server() as (uri, mlflow):
        process, base = start_service(
            tmp_path,
            "--simulate-step-seconds",
            "0.02",
            env_extra={"MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_TOKEN": "tok-secret"},
        )
        service = Service(process, base, tmp_path / "outputs")
        try:
            job = {
                **BASE,
                "job_id": "linked",
                "labels": {"team": "nlp"},
                "tracking": {"project": "vision"},
                "train_args": {"max_steps": 20, "report_to": ["tensorboard", "mlflow"]},
            }
            assert service.http.post("/jobs", json=job).status_code == 201
            service.wait_status("linked", "succeeded")
            shown = service.http.get("/jobs/linked").json()
            events = service.http.get("/jobs/linked/events").json()["events"]
            monkeypatch.setenv("SWIFT_TRAINER_URL", base.removesuffix(API))
            monkeypatch.setenv("SWIFT_TRAINER_CONFIG", str(tmp_path / "no-profiles.toml"))
            assert main(["jobs", "show", "linked"]) == 0
            out = capsys.readouterr().out
        finally:
            service.http.close()
            stderr = stop_service(process)
            assert process.returncode == 0, stderr[-3000:]
    [run] = mlflow.runs
    experiment = mlflow.experiments["vision"]
    url = f"{uri}/#/experiments/{experiment}/runs/{run['info']['run_id']}"
    assert shown["tracker_urls"] == {"mlflow": url}
    assert shown["start_warnings"] == []
    assert run["info"]["run_name"] == "linked"
    assert {"key": "team", "value": "nlp"} in run["data"]["tags"]
    assert all(r.headers["Authorization"] == "Bearer tok-secret" for r in mlflow.requests)
    assert "tok-secret" not in str(events) and "tok-secret" not in str(shown)
    assert "mlflow run" in out and url in "".join(out.split())


def test_b_still_waits_for_a_across_a_restart_of_everything(tmp_path: Path) -> None:
    """``up`` stops (its runner stops A with a checkpoint) while B waits for A; the restarted
    service knows B waits, A resumes and succeeds, and only then B runs."""
    process, base = start_service(tmp_path, "--simulate-step-seconds", "0.05")
    service = Service(process, base, tmp_path / "outputs")
    try:
        a = {**BASE, "job_id": "a", "train_args": {"max_steps": 400, "save_steps": 20}}
        assert service.http.post("/jobs", json=a).status_code == 201
        b = {**BASE, "job_id": "b", "after": [{"job": "a"}]}
        assert service.http.post("/jobs", json=b).json()["status"] == "waiting"
        service.wait_status("a", "running")
    finally:
        service.http.close()
        stderr = stop_service(process)
        assert process.returncode == 0, stderr[-3000:]
    process, base = start_service(tmp_path, "--simulate-step-seconds", "0.01")
    service = Service(process, base, tmp_path / "outputs")
    try:
        assert service.status("a") == "stopped"
        assert service.status("b") == "waiting"
        assert service.http.post("/jobs/a/start").status_code == 200
        seen_b: set[str] = set()

        def a_done() -> bool:
            b_status = service.status("b")
            if service.status("a") == "succeeded":
                return True
            seen_b.add(b_status)
            return False

        service.wait_for("a to succeed after the restart", a_done, timeout=120)
        assert seen_b == {"waiting"}
        service.wait_status("b", "succeeded")
    finally:
        service.http.close()
        stderr = stop_service(process)
        assert process.returncode == 0, stderr[-3000:]
