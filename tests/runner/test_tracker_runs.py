"""The tracker runs the runner opens before a start, and the links it reports for them."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import msgspec
import pytest
from tests.runner.mlflow_rest import API, mlflow_rest_server
from tests.runner.runner_helpers import make_spec

from swift_trainer.bus.embedded import free_port
from swift_trainer.core.spec import Tracking
from swift_trainer.runner.swift_command import SwiftInvocation, build_sft_command
from swift_trainer.runner.tracker_runs import (
    MlflowRun,
    TrackerError,
    mlflow_run_url,
    open_mlflow_run,
    prepare_trackers,
    public_url,
    wandb_run_url,
)


def invocation(
    tmp_path: Path, env: dict[str, str], *trackers: str, tracking: Tracking | None = None
) -> SwiftInvocation:
    spec = msgspec.structs.replace(make_spec(report_to=trackers), tracking=tracking)
    return build_sft_command(
        spec,
        output_root=tmp_path,
        gpu_ids=[0],
        base_env=env,
        run_name="job-7",
        run_tags={"job_id": "job-7", "team": "nlp"},
    )


def test_links_carry_no_credentials_query_or_trailing_slash() -> None:
    assert public_url("https://bob:s3cret@mlflow.example:8443/ml/?token=x") == (
        "https://mlflow.example:8443/ml"
    )
    assert public_url("http://[::1]:5000/") == "http://[::1]:5000"
    run = MlflowRun(experiment_id="3", run_id="abc")
    assert mlflow_run_url("http://u:p@10.0.0.1:5000/", run) == (
        "http://10.0.0.1:5000/#/experiments/3/runs/abc"
    )


def test_a_wandb_link_needs_the_entity() -> None:
    assert wandb_run_url({}, "job-7") is None
    assert wandb_run_url({"WANDB_ENTITY": "team"}, "job-7") == (
        "https://wandb.ai/team/huggingface/runs/job-7"
    )
    env = {"WANDB_ENTITY": "team", "WANDB_PROJECT": "p", "WANDB_BASE_URL": "https://api.wandb.ai"}
    assert wandb_run_url(env, "r") == "https://wandb.ai/team/p/runs/r"
    own = {"WANDB_ENTITY": "team", "WANDB_BASE_URL": "https://wandb.corp.example/"}
    assert wandb_run_url(own, "r") == "https://wandb.corp.example/team/huggingface/runs/r"


async def test_the_run_is_created_once_in_the_named_experiment_and_found_again() -> None:
    with mlflow_rest_server() as (uri, state):
        first = await open_mlflow_run(
            uri, job_id="job-7", run_name="job-7", tags={"team": "nlp"}, experiment="llm"
        )
        again = await open_mlflow_run(
            uri, job_id="job-7", run_name="job-7", tags={"team": "nlp"}, experiment="llm"
        )
        other = await open_mlflow_run(uri, job_id="job-8", run_name="job-8", tags={})
    assert first == again
    assert first.experiment_id == state.experiments["llm"] != "0"
    assert other.experiment_id == "0" and other.run_id != first.run_id
    calls = [(r.method, r.path.removeprefix(API)) for r in state.requests]
    assert calls[:4] == [
        ("GET", "/experiments/get-by-name"),
        ("POST", "/experiments/create"),
        ("POST", "/runs/search"),
        ("POST", "/runs/create"),
    ]
    assert calls[4:6] == [("GET", "/experiments/get-by-name"), ("POST", "/runs/search")]
    created = state.requests[3].body
    assert created["run_name"] == "job-7"
    assert {"key": "team", "value": "nlp"} in created["tags"]
    assert {"key": "job_id", "value": "job-7"} in created["tags"]
    assert len(state.runs) == 2


async def test_mlflow_credentials_go_in_headers_never_in_the_link() -> None:
    with mlflow_rest_server() as (uri, state):
        with_user = uri.replace("http://", "http://alice:pw@")
        run = await open_mlflow_run(with_user, job_id="j", run_name="j", tags={})
        token_env = {"MLFLOW_TRACKING_TOKEN": "tok"}
        await open_mlflow_run(uri, job_id="k", run_name="k", tags={}, env=token_env)
    basic = base64.b64encode(b"alice:pw").decode()
    assert state.requests[0].headers["Authorization"] == f"Basic {basic}"
    assert state.requests[-1].headers["Authorization"] == "Bearer tok"
    assert "alice" not in mlflow_run_url(with_user, run)


async def test_a_refusing_server_is_an_error_with_the_call_and_status() -> None:
    with mlflow_rest_server() as (uri, state):
        state.fail_with = 403
        with pytest.raises(TrackerError, match="runs/search answered 403"):
            await open_mlflow_run(uri, job_id="j", run_name="j", tags={})


async def test_the_training_attaches_to_the_run_the_runner_made(tmp_path: Path) -> None:
    with mlflow_rest_server() as (uri, state):
        env = {"MLFLOW_TRACKING_URI": uri, "PATH": "/bin"}
        start = await prepare_trackers(
            invocation(tmp_path, env, "tensorboard", "mlflow", tracking=Tracking(project="llm")),
            "job-7",
        )
    [run] = state.runs
    assert start.invocation.env["MLFLOW_RUN_ID"] == run["info"]["run_id"]
    assert start.invocation.env["MLFLOW_EXPERIMENT_NAME"] == "llm"
    assert start.urls == {
        "mlflow": f"{uri}/#/experiments/{state.experiments['llm']}/runs/{run['info']['run_id']}"
    }
    assert start.warnings == ()
    assert run["info"]["run_name"] == "job-7"
    assert {"key": "team", "value": "nlp"} in run["data"]["tags"]


async def test_a_refused_run_leaves_training_to_mlflow_with_a_warning(tmp_path: Path) -> None:
    with mlflow_rest_server() as (uri, state):
        state.fail_with = 500
        start = await prepare_trackers(
            invocation(tmp_path, {"MLFLOW_TRACKING_URI": uri}, "mlflow"), "job-7"
        )
    assert "MLFLOW_RUN_ID" not in start.invocation.env
    assert "mlflow" in start.invocation.argv
    assert start.urls == {}
    [warning] = start.warnings
    assert warning.startswith("mlflow: the run could not be created (/runs/search answered 500")


async def test_an_unreachable_mlflow_is_left_out_and_has_no_link(tmp_path: Path) -> None:
    closed = free_port()
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed}"}
    start = await prepare_trackers(invocation(tmp_path, env, "tensorboard", "mlflow"), "job-7")
    assert "mlflow" not in start.invocation.argv
    assert start.urls == {} and "MLFLOW_RUN_ID" not in start.invocation.env
    [warning] = start.warnings
    assert warning.startswith(f"mlflow: 127.0.0.1:{closed} cannot be reached")


async def test_file_trackers_and_a_local_mlflow_get_no_link(tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": str(tmp_path / "mlruns")}
    start = await prepare_trackers(invocation(tmp_path, env, "tensorboard", "mlflow"), "job-7")
    assert start.urls == {} and start.warnings == ()
    assert "MLFLOW_RUN_ID" not in start.invocation.env


async def test_wandb_runs_are_named_by_the_job_and_resume_across_attempts(
    tmp_path: Path,
) -> None:
    # W&B's own server is never contacted here: offline mode skips the reachability check.
    offline = {"WANDB_MODE": "offline"}
    start = await prepare_trackers(
        invocation(tmp_path, offline, "wandb", tracking=Tracking(entity="team", project="p")),
        "job-7",
    )
    assert start.invocation.env["WANDB_RUN_ID"] == "job-7"
    assert start.invocation.env["WANDB_RESUME"] == "allow"
    assert start.urls == {}, "an offline run has no page yet"
    server = await _listening()
    try:
        env = {"WANDB_BASE_URL": f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"}
        start = await prepare_trackers(
            invocation(tmp_path, env, "wandb", tracking=Tracking(entity="team", project="p")),
            "job-7",
        )
    finally:
        server.close()
        await server.wait_closed()
    base = env["WANDB_BASE_URL"]
    assert start.urls == {"wandb": f"{base}/team/p/runs/job-7"}
    no_entity = await prepare_trackers(invocation(tmp_path, offline, "wandb"), "job-7")
    assert no_entity.urls == {}


async def _listening() -> asyncio.Server:
    return await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
