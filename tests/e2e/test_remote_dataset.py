"""An uploaded dataset reaches a runner on another "host" through the JetStream object store.

The service (``up``, with its own local runner) and a second simulated runner process share
nothing but NATS: the second runner has its own state and output folders. A job pinned to
the second runner's GPU names an uploaded file; that runner fetches it into its cache
(keyed by id and digest) and swift gets the local path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from tests.e2e.live_service import Service, start_service, stop_service


@pytest.mark.timeout(300)
def test_a_second_runner_fetches_the_dataset_from_the_object_store(tmp_path: Path) -> None:
    process, base = start_service(tmp_path / "service", "--simulate-step-seconds", "0.02")
    service = Service(process, base, tmp_path / "service" / "outputs")
    remote_state = tmp_path / "remote-host" / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "REDIS", "EVENT"))}
    env.update(SWIFT_SIM_STEP_SECONDS="0.02", LOG_LEVEL="WARNING")
    nats_url = (tmp_path / "service" / "nats.url").read_text().strip()
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "swift_trainer.cli",
            "--data-dir",
            str(tmp_path / "remote-host"),
            "runner",
            "--nats-url",
            nats_url,
            "--runner-id",
            "remote-host",
            "--simulate-gpus",
            "1",
            "--simulate-gpu-name",
            "Remote H100",
            "--state-dir",
            str(remote_state),
            "--output-root",
            str(tmp_path / "remote-host" / "outputs"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        http = service.http
        service.wait_for("three GPUs", lambda: http.get("/gpus").json()["total"] == 3)
        content = b"".join(
            json.dumps({"query": f"q{i}", "response": f"r{i}"}).encode() + b"\n" for i in range(40)
        )
        uploaded = httpx.post(
            base + "/v1/files",
            files={"file": ("remote.jsonl", content)},
            data={"purpose": "fine-tune"},
        ).json()
        assert uploaded["status"] == "processed", uploaded
        file_id = uploaded["id"]

        for job_id in ("remote-1", "remote-2"):
            created = http.post(
                "/jobs",
                json={
                    "job_id": job_id,
                    "training_file": file_id,
                    "model_path": "m",
                    "gpu_name": "remote",
                    "train_args": {"save_steps": 5},
                },
            )
            assert created.status_code == 201, created.text
            service.wait_status(job_id, "succeeded", timeout=60)
            assert runner.poll() is None

        cached = list((remote_state / "agent" / "datasets" / file_id).glob("*.jsonl"))
        assert len(cached) == 1, "cached once, under the content digest"
        assert cached[0].read_bytes() == content
        assert len(cached[0].stem) == 64, "the SHA-256 digest names the cached copy"
        local_caches = list((tmp_path / "service").glob("runner-*/agent/datasets"))
        assert not any(p.exists() and any(p.iterdir()) for p in local_caches)

        job = http.get("/jobs/remote-1").json()
        assert job["last_runner_id"] == "remote-host"
        assert job["training_file"] == file_id
        events = http.get("/jobs/remote-1/events").json()["events"]
        started = next(e for e in events if e["type"] == "JobStarted")
        argv = started["data"]["command"]
        assert argv[argv.index("--dataset") + 1] == str(cached[0])

        # The CLI names uploaded files too, and pauses, resumes and cancels.
        service_dir = tmp_path / "service"

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "swift_trainer.cli", "--data-dir", str(service_dir), *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        dataset = tmp_path / "cli.jsonl"
        dataset.write_bytes(content)
        uploaded_by_cli = cli("operator", "upload", str(dataset))
        assert uploaded_by_cli.returncode == 0, uploaded_by_cli.stderr
        cli_file = json.loads(uploaded_by_cli.stdout)
        assert (cli_file["status"], cli_file["bytes"]) == ("processed", len(content))
        listed = httpx.get(base + "/v1/files").json()["data"]
        assert cli_file["id"] in [f["id"] for f in listed], "the same store as /v1/files"

        held = cli(
            "operator",
            "submit",
            "--job-id",
            "cli-1",
            "--training-file",
            cli_file["id"],
            "--model-path",
            "m",
            "--hold",
        )
        assert held.returncode == 0, held.stderr
        assert json.loads(held.stdout)["ok"] is True
        paused = cli("operator", "pause", "cli-1")
        assert paused.returncode == 0, paused.stderr
        assert [x["type"] for x in json.loads(paused.stdout)["events"]] == ["JobPaused"]
        service.wait_status("cli-1", "paused")
        resumed = cli("operator", "resume", "cli-1")
        assert resumed.returncode == 0, resumed.stderr
        assert [x["type"] for x in json.loads(resumed.stdout)["events"]] == ["JobQueued"]
        service.wait_status("cli-1", "succeeded", timeout=60)
        refused = cli("operator", "cancel", "cli-1")
        assert refused.returncode == 1, "a succeeded job cannot be cancelled"
        assert json.loads(refused.stdout)["error"]["code"] == "invalid_transition"

        # A file that does not exist is refused before any runner sees the job.
        missing = http.post(
            "/jobs", json={"training_file": "file-missing", "model_path": "m", "job_id": "nope"}
        )
        assert missing.status_code == 422
        assert missing.json()["code"] == "invalid_spec"
    finally:
        if runner.poll() is None:
            runner.send_signal(signal.SIGTERM)
        try:
            _, runner_err = runner.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            runner.kill()
            _, runner_err = runner.communicate()
        service.http.close()
        stderr = stop_service(process)
    assert runner.returncode == 0, runner_err[-3000:]
    assert process.returncode == 0, stderr[-3000:]
