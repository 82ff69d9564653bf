"""The sweep routes and the dependency checks of a create, over HTTP on a real bus."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api.conftest import Stack, read_model_of, running_stack, wait_for

from swift_trainer.api.app import create_app
from swift_trainer.projections.experiments.experiments_service import ExperimentsService

API = "/api/v1/training"
BASE = {"data_path": "d#100", "model_path": "m", "output_dir": "output/s"}


@dataclasses.dataclass
class SweepStack:
    stack: Stack
    client: httpx.AsyncClient
    experiments: ExperimentsService


@pytest.fixture
async def sweeps(tmp_path: Path) -> AsyncIterator[SweepStack]:
    async with read_model_of("memory") as model, running_stack(tmp_path, model) as (stack, _):
        experiments = ExperimentsService(stack.nc, store=stack.store, retry_s=0.3)
        await experiments.start()
        await experiments.wait_ready()
        app = create_app(dataclasses.replace(stack.deps, experiments=experiments))
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                yield SweepStack(stack, client, experiments)
        finally:
            await experiments.stop()


def sweep_body(**fields: Any) -> dict[str, Any]:
    return {
        "sweep_id": "s1",
        "name": "lr",
        "base": BASE,
        "parameters": {"train_args.learning_rate": {"values": [1e-5, 2e-5, 3e-5]}},
        "max_parallel": 2,
        **fields,
    }


async def test_create_show_list_csv_and_cancel(sweeps: SweepStack) -> None:
    http = sweeps.client
    created = await http.post(f"{API}/sweeps", json=sweep_body())
    assert created.status_code == 201, created.text
    assert created.headers["location"].endswith("/sweeps/s1")
    view = created.json()
    assert (view["trials_total"], view["status"], view["percent_done"]) == (3, "running", 0.0)
    assert [t["job_id"] for t in view["trials"]] == ["s1-t0", "s1-t1", "s1-t2"]
    assert view["trials"][2]["params"] == {"train_args.learning_rate": 3e-5}

    async def two_queued() -> bool:
        got = (await http.get(f"{API}/sweeps/s1")).json()
        # The process manager has seen both trials submitted: a cancel now signals both.
        known = sweeps.experiments.sweeps.trials
        submitted = all(j in known and known[j].submitted for j in ("s1-t0", "s1-t1"))
        return bool(got["counts"] == {"queued": 2, "pending": 1}) and submitted

    await wait_for(two_queued)
    listed = (await http.get(f"{API}/sweeps")).json()["sweeps"]
    assert [s["sweep_id"] for s in listed] == ["s1"] and "trials" not in listed[0]
    csv = (await http.get(f"{API}/sweeps/s1/results.csv")).text.splitlines()
    assert csv[0] == "index,job_id,status,outcome,metric,step,train_args.learning_rate"
    assert csv[1].startswith("0,s1-t0,queued,")
    cancelled = await http.post(f"{API}/sweeps/s1/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["trials_signalled"] == 2

    async def finished() -> bool:
        got = (await http.get(f"{API}/sweeps/s1")).json()
        return bool(got["status"] == "finished")

    await wait_for(finished)
    final = (await http.get(f"{API}/sweeps/s1")).json()
    assert final["counts"] == {"cancelled": 2, "pending": 1}
    assert final["best"] is None if "best" in final else True


@pytest.mark.parametrize(
    ("fields", "status", "words"),
    [
        ({"parameters": {"train_args.learning_rte": {"values": [1]}}}, 422, "learning_rte"),
        ({"parameters": {"priority": {"min": 0, "max": 9}}}, 422, "has a range"),
        ({"method": "random", "count": 300}, 422, ""),
        ({"parameters": {"train_args.lora_rank": {"values": [0]}}}, 422, "lora_rank"),
        ({"parameters": {}}, 422, "at least one parameter"),
        ({"surprise": 1}, 422, ""),
    ],
)
async def test_a_bad_sweep_is_refused_with_a_clear_problem(
    sweeps: SweepStack, fields: dict[str, Any], status: int, words: str
) -> None:
    answer = await sweeps.client.post(f"{API}/sweeps", json=sweep_body(**fields))
    assert answer.status_code == status, answer.text
    assert words in answer.text


async def test_unknown_sweeps_and_taken_ids(sweeps: SweepStack) -> None:
    http = sweeps.client
    assert (await http.get(f"{API}/sweeps/none")).json()["code"] == "sweep_not_found"
    assert (await http.post(f"{API}/sweeps/none/stop")).status_code == 404
    assert (await http.post(f"{API}/sweeps", json=sweep_body())).status_code == 201
    again = await http.post(f"{API}/sweeps", json=sweep_body())
    assert (again.status_code, again.json()["code"]) == (409, "sweep_already_exists")


async def test_a_create_refuses_unknown_jobs_and_cycles_in_after(sweeps: SweepStack) -> None:
    http = sweeps.client
    unknown = await http.post(f"{API}/jobs", json={**BASE, "job_id": "b", "after": [{"job": "x"}]})
    assert unknown.status_code == 422 and "unknown jobs: x" in unknown.json()["detail"]
    assert (await http.post(f"{API}/jobs", json={**BASE, "job_id": "y"})).status_code == 201
    held = {**BASE, "job_id": "x", "after": [{"job": "y"}], "auto_start": False}
    x = await http.post(f"{API}/jobs", json=held)
    assert (x.status_code, x.json()["status"]) == (201, "held")
    # y is deleted and submitted again, waiting for x, which (held) still names y: a loop.
    assert (await http.delete(f"{API}/jobs/y")).status_code in (200, 204)
    await sweeps.stack.settled()
    cycle = await http.post(f"{API}/jobs", json={**BASE, "job_id": "y", "after": [{"job": "x"}]})
    assert cycle.status_code == 422, cycle.text
    assert "y -> x -> y" in cycle.json()["detail"]
    shown = (await http.get(f"{API}/jobs/x")).json()
    assert shown["status"] == "held" and shown["after"] == [{"job": "y", "on": "succeeded"}]
    # A job that waited for y and was cancelled when y was deleted names no loop.
    z = await http.post(f"{API}/jobs", json={**BASE, "job_id": "z"})
    assert z.status_code == 201
    w = await http.post(f"{API}/jobs", json={**BASE, "job_id": "w", "after": [{"job": "z"}]})
    assert w.json()["status"] == "waiting"
    assert (await http.delete(f"{API}/jobs/z")).status_code in (200, 204)

    async def w_cancelled() -> bool:
        return bool((await http.get(f"{API}/jobs/w")).json()["status"] == "cancelled")

    await wait_for(w_cancelled)
    again = await http.post(f"{API}/jobs", json={**BASE, "job_id": "z", "after": [{"job": "w"}]})
    assert again.status_code == 201, again.text
