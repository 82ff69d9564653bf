"""A multi-node job across two runners on loopback, each a separate process with 2 GPUs.

Handler, scheduler, API and two simulated runners share one nats-server, one SQLite event
store and Redis read models, as hosts of a cluster would; the runners share OUTPUT_ROOT as
the hosts of a multi-node job must. Each simulated rank records the rendezvous environment
it was started with, so the test reads what every rank saw.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from tests.e2e.conftest import REDIS_URL, process_env, redis_prefix

from swift_trainer.bus.embedded import free_port

API = "/api/v1/training"


class Cluster:
    """The service's processes; a runner can be killed and started again by name."""

    def __init__(self, tmp_path: Path, nats_url: str, step_seconds: float) -> None:
        self.prefix = redis_prefix("multinode")
        port = free_port()
        self.env = process_env(
            tmp_path,
            nats_url=nats_url,
            redis_prefix=self.prefix,
            port=port,
            step_seconds=step_seconds,
        )
        self.output_root = Path(self.env["OUTPUT_ROOT"])
        self.processes: dict[str, subprocess.Popen[str]] = {}
        #: The job whose history a failed wait shows.
        self.job_id = ""
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}{API}", timeout=30)

    def start(self, name: str, *args: str) -> None:
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "swift_trainer.cli", *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def start_runner(self, runner_id: str, rack: str) -> None:
        self.start(
            runner_id,
            *("runner", "--runner-id", runner_id, "--simulate-gpus", "2"),
            *("--label", f"rack={rack}", "--lease-s", "6", "--grace-period-s", "20"),
        )

    def wait(self, what: str, probe: Callable[[], Any], timeout: float = 90) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                assert process.poll() is None, f"{name} died: {process.communicate()[1][-3000:]}"
            try:
                result = probe()
            except httpx.HTTPError:
                result = None
            if result:
                return result
            time.sleep(0.2)
        history = [(x["type"], x["data"].get("reason")) for x in self.events(self.job_id)]
        pytest.fail(f"timed out waiting for {what}; the job's events: {history}")

    def events(self, job_id: str) -> list[dict[str, Any]]:
        body = self.http.get(f"/jobs/{job_id}/events", params={"limit": 500}).json()
        items: list[dict[str, Any]] = body["events"] if isinstance(body, dict) else body
        return items

    def seen_env(self, job_id: str) -> dict[int, dict[str, str]]:
        folder = self.output_root / "output" / job_id
        seen = {}
        for path in folder.glob("rendezvous-node-*.json"):
            data = json.loads(path.read_text())
            seen[int(data["NODE_RANK"])] = data
        return seen

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
        self.http.close()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=self.prefix + "*"):
            client.delete(key)
        client.close()


@pytest.fixture
def cluster(tmp_path: Path, nats_url: str, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    step_seconds = getattr(request, "param", 0.02)
    running = Cluster(tmp_path, nats_url, step_seconds)
    # Preemption with no minimum runtime and a short grace, for the urgent gang below.
    running.env.update(PREEMPT_MIN_RUNTIME_S="0", PREEMPT_GRACE_S="15")
    try:
        for name in ("handler", "scheduler", "api"):
            running.start(name, name)
        running.start_runner("gpu-host-1", "r1")
        running.start_runner("gpu-host-2", "r1")
        running.wait("the API", lambda: running.http.get("/health").status_code == 200)
        running.wait("both runners", lambda: running.http.get("/gpus").json()["total"] == 4)
        yield running
    finally:
        running.close()


def submit(cluster: Cluster, job_id: str, data: str, **extra: Any) -> None:
    cluster.job_id = job_id
    body = {
        **extra,
        "job_id": job_id,
        "data_path": data,
        "model_path": "m",
        "gpu_count": 2,
        "nodes": 2,
        "host_labels": {"rack": "r1"},
        "train_args": {"save_steps": 5},
    }
    created = cluster.http.post("/jobs", json=body)
    assert created.status_code == 201, created.text


def status(cluster: Cluster, job_id: str) -> str:
    return str(cluster.http.get(f"/jobs/{job_id}/status").json()["status"])


@pytest.mark.timeout(240)
def test_a_two_node_job_runs_on_both_runners_with_the_rendezvous_on_every_rank(
    cluster: Cluster,
) -> None:
    submit(cluster, "mn-1", "d#64")
    cluster.wait("success", lambda: status(cluster, "mn-1") == "succeeded")
    events = cluster.events("mn-1")
    (scheduled,) = [x["data"] for x in events if x["type"] == "JobScheduled"]
    assert scheduled["runner_id"] == "gpu-host-1"
    assert [p["runner_id"] for p in scheduled["peers"]] == ["gpu-host-2"]
    (rank_start,) = [x["data"] for x in events if x["type"] == "RankStartRequested"]
    assert [x["data"]["rank"] for x in events if x["type"] == "RankStarted"] == [1]
    seen = cluster.seen_env("mn-1")
    assert sorted(seen) == [0, 1]
    for rank, env in seen.items():
        assert env["NNODES"] == "2"
        assert env["NODE_RANK"] == str(rank)
        assert env["NPROC_PER_NODE"] == "2"
        assert env["MASTER_ADDR"] == rank_start["master_addr"] == "127.0.0.1"
        assert env["MASTER_PORT"] == str(rank_start["master_port"])
    job = cluster.http.get("/jobs/mn-1").json()
    assert job["checkpoints"]
    assert (job["nodes"], job["host_labels"]) == (2, {"rack": "r1"})

    def ranks_logged() -> set[int | None]:
        lines = cluster.http.get("/jobs/mn-1/logs", params={"limit": 1000}).json()["lines"]
        found = {line.get("rank") for line in lines}
        return found if found == {0, 1} else set()

    assert cluster.wait("both ranks' lines, marked", ranks_logged, timeout=20) == {0, 1}


@pytest.mark.timeout(400)
@pytest.mark.parametrize("cluster", [0.15], indirect=True)
def test_losing_one_runner_stops_the_other_rank_requeues_and_resumes(cluster: Cluster) -> None:
    submit(cluster, "mn-2", "d#2000")

    def started() -> dict[str, Any] | None:
        events = cluster.events("mn-2")
        ranks = [x for x in events if x["type"] == "RankStarted"]
        checkpoints = [x for x in events if x["type"] == "CheckpointSaved"]
        head = [x["data"] for x in events if x["type"] == "JobStarted"]
        return head[0] if ranks and checkpoints and head else None

    rank0 = cluster.wait("both ranks and a checkpoint", started)
    os.kill(cluster.processes["gpu-host-2"].pid, signal.SIGKILL)
    cluster.processes.pop("gpu-host-2").communicate()
    # The other rank is stopped within 60 s of its peer's runner dying (its lease is 6 s).
    cluster.wait("rank 0 to stop", lambda: not _alive(rank0["pid"]), timeout=60)
    cluster.wait("the requeue", lambda: status(cluster, "mn-2") == "queued", timeout=30)
    cluster.start_runner("gpu-host-2", "r1")
    cluster.wait("success", lambda: status(cluster, "mn-2") == "succeeded", timeout=180)
    events = cluster.events("mn-2")
    types = [x["type"] for x in events]
    assert "JobLost" in types and "JobRequeued" in types
    second = [x["data"] for x in events if x["type"] == "JobScheduled"][-1]
    assert second["attempt"] >= 2 and second["resume_from"]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.timeout(400)
@pytest.mark.parametrize("cluster", [0.05], indirect=True)
def test_an_urgent_two_node_job_preempts_on_both_runners_and_starts_on_both(
    cluster: Cluster,
) -> None:
    for job_id in ("low-1", "low-2"):
        body = {
            "job_id": job_id,
            "data_path": "d#64",
            "model_path": "m",
            "gpu_count": 2,
            "priority": 1,
            "train_args": {"max_steps": 3000, "save_steps": 10},
        }
        assert cluster.http.post("/jobs", json=body).status_code == 201
    for job_id in ("low-1", "low-2"):
        cluster.job_id = job_id
        cluster.wait(f"{job_id} to run", lambda j=job_id: status(cluster, j) == "running")
    submit(cluster, "urgent-gang", "d#64", priority=9)
    cluster.wait(
        "the gang to run", lambda: status(cluster, "urgent-gang") in ("running", "succeeded")
    )
    events = cluster.events("urgent-gang")
    (scheduled,) = [x["data"] for x in events if x["type"] == "JobScheduled"]
    runners = {scheduled["runner_id"], *(p["runner_id"] for p in scheduled["peers"])}
    assert runners == {"gpu-host-1", "gpu-host-2"}
    for job_id in ("low-1", "low-2"):
        history = cluster.events(job_id)
        stop = next(x["data"] for x in history if x["type"] == "StopRequested")
        assert stop["intent"] == "preempt"
        assert stop["reason"].startswith("preempted by urgent-gang (priority 9 > 1) on host")
        assert "JobPreempted" in [x["type"] for x in history]
    cluster.job_id = "urgent-gang"
    cluster.wait("the gang to succeed", lambda: status(cluster, "urgent-gang") == "succeeded")
    for job_id in ("low-1", "low-2"):
        cluster.job_id = job_id
        cluster.wait(f"{job_id} back", lambda j=job_id: status(cluster, j) == "running")
        cluster.http.post(f"/jobs/{job_id}/cancel")
