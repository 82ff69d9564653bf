"""Real ms-swift training reported to a real MLflow tracking server and to TensorBoard.

Opt-in like ``test_real_swift.py`` (``SWIFT_TRAINER_REAL_SWIFT=1`` after
``scripts/setup_real_swift.sh``, which installs ``mlflow`` into the same venv). Each test
starts ``mlflow server`` on a free loopback port with a SQLite store in its temp folder,
and stops it by its process group.

What ms-swift 4.6.0 with transformers 5.19 and mlflow 3.17 read: ``--report_to`` and
``--run_name`` (``TrainingArguments``); transformers' ``MLflowCallback`` reads
``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME`` (``set_experiment``) and
``MLFLOW_TAGS`` (JSON, ``set_tags``), and MLflow's ``start_run`` attaches to the run named
by ``MLFLOW_RUN_ID`` when its experiment is the one set. TensorBoard's files land in
``<output_dir>/runs`` (ms-swift sets ``TENSORBOARD_LOGGING_DIR``). SwanLab takes ms-swift's
own ``--swanlab_*`` arguments, not SwanLab's variables.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from nats.aio.client import Client
from tests.runner.agent_helpers import (
    job_events,
    ok,
    submit_and_schedule,
    wait_event,
)
from tests.runner.real_swift import start_real_agent, tiny_spec

from swift_trainer.bus.command_client import CommandClient
from swift_trainer.bus.command_handler import CommandHandler
from swift_trainer.bus.embedded import free_port
from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.spec import JobSpec, Tracking
from swift_trainer.core.sqlstore import SqlEventStore
from swift_trainer.runner.agent import RunnerAgent

pytestmark = [pytest.mark.swift, pytest.mark.timeout(900)]

API = "/api/2.0/mlflow"
EXPERIMENT = "swift-trainer-real"


@pytest.fixture
def mlflow_uri(swift_venv: Path, tmp_path: Path) -> Iterator[str]:
    """A real MLflow tracking server on loopback, stopped by its process group."""
    folder = tmp_path / "mlflow"
    folder.mkdir()
    port = free_port()
    argv = [
        str(swift_venv / "bin" / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
    ]
    log = (folder / "server.log").open("wb")
    # Without its job runner (huey workers for GenAI jobs): the REST API and UI are all
    # a training run needs, and five fewer processes share this machine's cores.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(
        argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(uri, process, folder / "server.log")
        yield uri
    finally:
        _stop_group(process)
        log.close()


def _wait_healthy(uri: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until ``/health`` answers (its database migrations take a while on first start)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited {process.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{uri}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer in 240 s: {log.read_text()[-3000:]}")


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    else:
        # The server's workers share its group; take any left behind with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
async def tracked_agent(
    swift_venv: Path, mlflow_uri: str, nc: Client, bus: CommandHandler, tmp_path: Path
) -> AsyncIterator[RunnerAgent]:
    """A runner whose environment names the MLflow server (and nothing else about it)."""
    agent = await start_real_agent(swift_venv, nc, tmp_path, {"MLFLOW_TRACKING_URI": mlflow_uri})
    try:
        yield agent
    finally:
        agent.stop_jobs_on_exit = True
        await agent.stop()


def tracked_spec(tiny: dict[str, str], max_steps: int) -> JobSpec:
    spec = tiny_spec(tiny, max_steps)
    return msgspec.structs.replace(
        spec,
        labels={"team": "nlp"},
        tracking=Tracking(project=EXPERIMENT, tags=("real-swift",)),
        train_args=msgspec.structs.replace(spec.train_args, report_to=("mlflow", "tensorboard")),
    )


async def _mlflow(uri: str, method: str, path: str, **kwargs: Any) -> Any:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.request(method, uri + API + path, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_real_training_is_a_linked_mlflow_run_with_its_loss_and_tensorboard_files(
    tracked_agent: RunnerAgent,
    mlflow_uri: str,
    tiny: dict[str, str],
    nc: Client,
    store: SqlEventStore,
    tmp_path: Path,
) -> None:
    client = CommandClient(nc, timeout=10.0, actor="test-scheduler")
    job = "real-tracked"
    await submit_and_schedule(client, job, tracked_spec(tiny, max_steps=60), runner_id="real")
    started = (await wait_event(store, job, e.JobStarted, timeout=300))[0]
    assert started.warnings == ()
    command = started.command
    assert command[command.index("--report_to") + 1 : command.index("--report_to") + 3] == (
        "mlflow",
        "tensorboard",
    )
    assert not any(mlflow_uri in part for part in command), "the URI stays in the environment"

    # A stop after the first checkpoint and a second attempt: both go to the same run.
    await wait_event(store, job, e.CheckpointSaved, timeout=300)
    await ok(client, c.StopJob(job_id=job, reason="test stop"))
    await wait_event(store, job, e.JobStopped, timeout=300)
    await ok(client, c.StartJob(job_id=job))
    await ok(client, c.ScheduleJob(job_id=job, attempt=2, runner_id="real", gpu_ids=(0,)))
    succeeded = (await wait_event(store, job, e.JobSucceeded, timeout=600))[0]
    assert succeeded.attempt == 2
    first, second = await wait_event(store, job, e.JobStarted, count=2)

    by_name = {"experiment_name": EXPERIMENT}
    named = await _mlflow(mlflow_uri, "GET", "/experiments/get-by-name", params=by_name)
    experiment = named["experiment"]
    found = await _mlflow(
        mlflow_uri,
        "POST",
        "/runs/search",
        json={"experiment_ids": [experiment["experiment_id"]], "max_results": 10},
    )
    runs = found["runs"]
    assert len(runs) == 1, "both attempts report to one run"
    run = runs[0]
    info, data = run["info"], run["data"]
    assert info["run_name"] == job
    assert info["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in data["tags"]}
    assert tags["job_id"] == job
    assert tags["team"] == "nlp"
    assert tags["real-swift"] == "true"
    run_url = f"{mlflow_uri}/#/experiments/{experiment['experiment_id']}/runs/{info['run_id']}"
    assert first.tracker_urls == second.tracker_urls == {"mlflow": run_url}
    async with httpx.AsyncClient(timeout=30) as http:
        page = await http.get(run_url.split("#", maxsplit=1)[0])
    assert page.status_code == 200 and "<html" in page.text.lower(), "the link opens MLflow's UI"

    loss = await _mlflow(
        mlflow_uri,
        "GET",
        "/metrics/get-history",
        params={"run_id": info["run_id"], "metric_key": "loss", "max_results": 1000},
    )
    history = loss["metrics"]
    assert history, data.get("metrics")
    steps = sorted(m["step"] for m in history)
    assert all(isinstance(m["value"], float) for m in history)
    progress = [x for x in await job_events(store, job) if isinstance(x, e.JobProgressed)]
    stopped_at = max(p.step for p in progress if p.attempt == 1)
    assert steps[0] <= stopped_at < steps[-1], "loss from both attempts, by global step"
    assert steps[-1] >= 58

    output = Path(succeeded.output_path or "").parent
    events_files = list(output.rglob("events.out.tfevents.*"))
    assert events_files, f"no TensorBoard event files under {output}"
    assert all(f.stat().st_size > 0 for f in events_files)
    assert any(p.parent.name == "runs" for p in events_files)


async def test_an_unreachable_mlflow_leaves_real_training_running_with_a_warning(
    swift_venv: Path,
    tiny: dict[str, str],
    nc: Client,
    bus: CommandHandler,
    store: SqlEventStore,
    tmp_path: Path,
) -> None:
    closed = free_port()
    agent = await start_real_agent(
        swift_venv, nc, tmp_path, {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed}"}
    )
    try:
        client = CommandClient(nc, timeout=10.0, actor="test-scheduler")
        job = "real-untracked"
        await submit_and_schedule(client, job, tracked_spec(tiny, max_steps=12), runner_id="real")
        succeeded = (await wait_event(store, job, e.JobSucceeded, timeout=600))[0]
        assert succeeded.final_step == 12
        [started] = await wait_event(store, job, e.JobStarted)
        [warning] = started.warnings
        assert warning.startswith(f"mlflow: 127.0.0.1:{closed} cannot be reached")
        assert started.tracker_urls == {}
        report_to = started.command[started.command.index("--report_to") + 1]
        assert report_to == "tensorboard", started.command
        output = Path(succeeded.output_path or "").parent
        assert list(output.rglob("events.out.tfevents.*"))
    finally:
        agent.stop_jobs_on_exit = True
        await agent.stop()
