"""The job endpoints against the real command path, on both read-model backends."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from swift_trainer.api.jobs.submission import prefer_wait_s
from swift_trainer.core import commands as c
from swift_trainer.projections.read_models import LogLine, QueueEntry, QueueView

from .conftest import Stack, wait_for

BODY: dict[str, Any] = {
    "data_path": "AI-ModelScope/coco#20000",
    "model_path": "Qwen/Qwen2.5-VL-7B-Instruct",
}


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code, body
    assert body["type"].endswith(code)
    assert body["title"]
    assert body["detail"]
    assert body["instance"] == response.request.url.path
    return body


# --- create -------------------------------------------------------------------------------


async def test_create_answers_like_the_seed_and_the_job_appears(stack: Stack) -> None:
    response = await stack.client.post(
        stack.url("/jobs"), json={**BODY, "output_dir": "output/training_001", "priority": 9}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["job_id"] == "training_001", "the seed's ids follow the output dir"
    assert body["status"] == "queued"
    assert body["message"]
    assert body["queue_position"] == 1
    assert body["estimated_wait_time"] == "unknown", "no scheduler has estimated it"
    assert body["output_dir"] == "output/training_001"
    assert response.headers["location"] == stack.url("/jobs/training_001")
    summary = await stack.job("training_001")
    assert summary.status == "queued"
    assert summary.priority == 9


async def test_a_taken_output_dir_name_falls_back_to_a_generated_id(stack: Stack) -> None:
    first = await stack.client.post(stack.url("/jobs"), json={**BODY, "output_dir": "out/run1"})
    second = await stack.client.post(stack.url("/jobs"), json={**BODY, "output_dir": "out/run1"})
    assert first.status_code == second.status_code == 201
    assert first.json()["job_id"] == "run1"
    assert second.json()["job_id"].startswith("job-")


async def test_output_dir_defaults_under_output_and_ids_are_generated(stack: Stack) -> None:
    response = await stack.client.post(stack.url("/jobs"), json=BODY)
    body = response.json()
    assert body["job_id"].startswith("job-")
    assert body["output_dir"] == f"output/{body['job_id']}"
    assert (await stack.job(body["job_id"])).output_dir == body["output_dir"]


async def test_a_chosen_id_that_exists_is_a_409(stack: Stack) -> None:
    await stack.create(job_id="mine")
    response = await stack.client.post(stack.url("/jobs"), json={**BODY, "job_id": "mine"})
    problem(response, 409, "job_already_exists")


async def test_a_held_job_has_no_queue_place(stack: Stack) -> None:
    response = await stack.client.post(
        stack.url("/jobs"), json={**BODY, "job_id": "h", "auto_start": False}
    )
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "held"
    assert "queue_position" not in body
    assert (await stack.job("h")).status == "held"


async def test_queue_position_follows_priority_then_submission(stack: Stack) -> None:
    await stack.create(job_id="low", priority=1)
    await stack.create(job_id="high", priority=9)
    await stack.create(job_id="mid", priority=5)
    response = await stack.client.post(stack.url("/jobs"), json={**BODY, "priority": 5})
    body = response.json()
    assert body["queue_position"] == 3, "behind high and the earlier mid, ahead of low"
    assert body["queue_source"] == "submission_order"


async def test_queue_estimate_comes_from_the_scheduler_view(stack: Stack) -> None:
    now = datetime.now(UTC)
    view = QueueView(
        entries=(
            QueueEntry(
                job_id="est", position=2, priority=5, estimated_start=now + timedelta(minutes=30)
            ),
        ),
        computed_at=now,
    )
    await stack.read_model.set_queue_view(view)
    response = await stack.client.post(stack.url("/jobs"), json={**BODY, "job_id": "est"})
    body = response.json()
    assert body["queue_position"] == 2
    assert body["queue_source"] == "scheduler"
    assert 29 * 60 < body["estimated_wait_s"] <= 30 * 60
    assert body["estimated_wait_time"] in {"about 29 minutes", "about 30 minutes"}


async def test_a_job_the_scheduler_has_not_listed_goes_behind_equal_priorities(
    stack: Stack,
) -> None:
    now = datetime.now(UTC)
    entries = tuple(
        QueueEntry(job_id=f"q{i}", position=i + 1, priority=p) for i, p in enumerate((9, 5, 1))
    )
    await stack.read_model.set_queue_view(QueueView(entries=entries, computed_at=now))
    response = await stack.client.post(stack.url("/jobs"), json={**BODY, "priority": 5})
    body = response.json()
    assert "queue_position" not in body, "no guess: the scheduler has not ranked it"
    assert body["queue_source"] == "scheduler_pending"
    assert body["estimated_wait_time"] == "unknown"
    assert "not ranked it yet" in body["message"]
    queue = (await stack.client.get(stack.url("/queue"))).json()
    assert [e["job_id"] for e in queue["entries"]] == ["q0", "q1", "q2"]
    assert queue["pending"] == [{"job_id": body["job_id"], "priority": 5}]


async def test_a_job_the_scheduler_has_seen_but_not_listed_is_being_placed(
    stack: Stack,
) -> None:
    now = datetime.now(UTC)
    await stack.read_model.set_queue_view(
        QueueView(entries=(), computed_at=now, as_of_position=10**9)
    )
    response = await stack.client.post(stack.url("/jobs"), json=BODY)
    body = response.json()
    assert body["status"] == "queued"
    assert body["queue_source"] == "scheduler_placing"
    assert "queue_position" not in body
    queue = (await stack.client.get(stack.url("/queue"))).json()
    assert queue["pending"] == [], "the view is past every event: nothing is unranked"


@pytest.mark.parametrize(
    ("prefer", "seconds"),
    [
        (None, 1.0),
        ("wait=0", 0.0),
        ("wait=2", 2.0),
        ("respond-async, wait=1.5", 1.5),
        ("wait=600", 5.0),
        ("wait=soon", 1.0),
        ("wait=-1", 1.0),
        ("wait=nan", 1.0),
        ("return=minimal", 1.0),
    ],
)
def test_prefer_wait_is_read_capped_and_malformed_ignored(
    prefer: str | None, seconds: float
) -> None:
    assert prefer_wait_s(prefer) == seconds


async def test_prefer_wait_waits_for_the_view_and_gives_up_honestly(stack: Stack) -> None:
    now = datetime.now(UTC)
    await stack.read_model.set_queue_view(QueueView(entries=(), computed_at=now))
    started = time.monotonic()
    response = await stack.client.post(
        stack.url("/jobs"), json=BODY, headers={"Prefer": "wait=0.3"}
    )
    assert time.monotonic() - started >= 0.3, "it waited for a view past the create"
    assert response.json()["queue_source"] == "scheduler_pending"


async def test_idempotency_key_returns_the_first_answer_and_creates_once(stack: Stack) -> None:
    headers = {"Idempotency-Key": "create-42"}
    first = await stack.client.post(stack.url("/jobs"), json=BODY, headers=headers)
    again = await stack.client.post(stack.url("/jobs"), json=BODY, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    other = await stack.client.post(
        stack.url("/jobs"), json=BODY, headers={"Idempotency-Key": "create-43"}
    )
    assert other.json()["job_id"] != first.json()["job_id"]
    await stack.settled()
    page = (await stack.client.get(stack.url("/jobs"))).json()
    assert sorted(job["job_id"] for job in page["items"]) == sorted(
        [first.json()["job_id"], other.json()["job_id"]]
    )


async def test_idempotency_key_with_a_derived_id_survives_the_fallback(stack: Stack) -> None:
    await stack.create(job_id="taken")
    headers = {"Idempotency-Key": "k-derived"}
    body = {**BODY, "output_dir": "runs/taken"}
    first = await stack.client.post(stack.url("/jobs"), json=body, headers=headers)
    again = await stack.client.post(stack.url("/jobs"), json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["job_id"] != "taken"
    assert first.json()["job_id"] == again.json()["job_id"]
    await stack.settled()
    assert (await stack.read_model.count_by_status())["queued"] == 2


async def test_a_retried_refusal_is_refused_again(stack: Stack) -> None:
    await stack.create(job_id="dup")
    headers = {"Idempotency-Key": "k-dup"}
    body = {**BODY, "job_id": "dup"}
    problem(
        await stack.client.post(stack.url("/jobs"), json=body, headers=headers),
        409,
        "job_already_exists",
    )
    problem(
        await stack.client.post(stack.url("/jobs"), json=body, headers=headers),
        409,
        "job_already_exists",
    )


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({**BODY, "priority": 11}, "priority"),
        ({**BODY, "priority": -1}, "priority"),
        ({**BODY, "priority": "5"}, "priority"),
        ({**BODY, "priority": 5.5}, "priority"),
        ({**BODY, "auto_start": 1}, "auto_start"),
        ({**BODY, "gpu_count": 0}, "gpu_count"),
        ({**BODY, "unknown": True}, ""),
        ({**BODY, "train_args": {"learning_rte": 1e-4}}, "train_args"),
        ({**BODY, "train_args": {"lora_rank": 0}}, "train_args.lora_rank"),
        ({**BODY, "job_id": "has space"}, "job_id"),
        ({**BODY, "job_id": "-leading-dash"}, "job_id"),
        ({"model_path": "m"}, ""),
        ({**BODY, "data_path": ""}, "data_path"),
        ({**BODY, "labels": {"k": "v" * 300}}, "labels"),
    ],
)
async def test_invalid_bodies_are_422_validation_errors(
    memory_stack: Stack, body: dict[str, Any], key: str
) -> None:
    response = await memory_stack.client.post(memory_stack.url("/jobs"), json=body)
    details = problem(response, 422, "validation_error")
    assert details["errors"], details
    assert details["errors"][0]["key"].startswith(key), details


@pytest.mark.parametrize(
    "output_dir", ["/abs/path", "../escape", "a/../../b", "C:\\win", ".", "a\\b"]
)
async def test_output_dirs_outside_the_output_root_are_invalid_specs(
    memory_stack: Stack, output_dir: str
) -> None:
    response = await memory_stack.client.post(
        memory_stack.url("/jobs"), json={**BODY, "output_dir": output_dir}
    )
    problem(response, 422, "invalid_spec")


async def test_too_many_labels_is_an_invalid_spec(memory_stack: Stack) -> None:
    labels = {f"k{i}": "v" for i in range(40)}
    response = await memory_stack.client.post(
        memory_stack.url("/jobs"), json={**BODY, "labels": labels}
    )
    problem(response, 422, "invalid_spec")


@pytest.mark.parametrize("content", [b'{"data_path": ', b"not json", b"\xff\xfe"])
async def test_malformed_json_is_a_400(memory_stack: Stack, content: bytes) -> None:
    response = await memory_stack.client.post(
        memory_stack.url("/jobs"), content=content, headers={"content-type": "application/json"}
    )
    problem(response, 400, "malformed_json")


@pytest.mark.parametrize("content", [b"", b"[]", b"null", b"42"])
async def test_a_body_that_is_not_an_object_is_a_422(memory_stack: Stack, content: bytes) -> None:
    response = await memory_stack.client.post(
        memory_stack.url("/jobs"), content=content, headers={"content-type": "application/json"}
    )
    problem(response, 422, "validation_error")


async def test_an_oversized_body_is_a_413(memory_stack: Stack) -> None:
    body = {**BODY, "labels": {"x": "y" * (2 * 1024 * 1024)}}
    response = await memory_stack.client.post(memory_stack.url("/jobs"), json=body)
    problem(response, 413, "payload_too_large")


async def test_more_gpus_than_any_runner_has_is_unsatisfiable(stack: Stack) -> None:
    two_gpus = {"gpus": [{"index": 0}, {"index": 1}], "host": {"hostname": "h"}}
    await stack.read_model.put_runner_snapshot(
        "runner-1", msgspec.json.encode(two_gpus), datetime.now(UTC)
    )
    details = problem(
        await stack.client.post(stack.url("/jobs"), json={**BODY, "gpu_count": 4}),
        422,
        "unsatisfiable",
    )
    assert "2" in details["detail"]
    ok = await stack.client.post(stack.url("/jobs"), json={**BODY, "gpu_count": 2})
    assert ok.status_code == 201


async def test_a_multi_node_job_needs_enough_matching_runners(stack: Stack) -> None:
    for runner_id, rack in (("r1", "a"), ("r2", "a"), ("r3", "b")):
        beat = {"gpus": [{"index": 0}, {"index": 1}], "labels": {"rack": rack}}
        await stack.read_model.put_runner_snapshot(
            runner_id, msgspec.json.encode(beat), datetime.now(UTC)
        )
    gang = {**BODY, "gpu_count": 2, "nodes": 3}
    created = await stack.client.post(stack.url("/jobs"), json={**gang, "job_id": "g1"})
    assert created.status_code == 201, created.text
    details = problem(
        await stack.client.post(
            stack.url("/jobs"), json={**gang, "job_id": "g2", "host_labels": {"rack": "a"}}
        ),
        422,
        "unsatisfiable",
    )
    assert "3 runners labelled rack=a with 2 GPUs each, and 2 known runners" in details["detail"]
    too_big = {**gang, "job_id": "g3", "gpu_count": 4, "nodes": 2}
    problem(await stack.client.post(stack.url("/jobs"), json=too_big), 422, "unsatisfiable")

    async def shown() -> dict[str, Any]:
        return dict((await stack.client.get(stack.url("/jobs/g1"))).json())

    job = await shown()
    deadline = asyncio.get_running_loop().time() + 30
    while "nodes" not in job:  # the read model shows the job once it applied the event
        assert asyncio.get_running_loop().time() < deadline, job
        await asyncio.sleep(0.1)
        job = await shown()
    assert (job["nodes"], job["gpu_count"]) == (3, 2)


async def test_gpu_count_is_not_limited_while_no_runner_is_known(stack: Stack) -> None:
    response = await stack.client.post(stack.url("/jobs"), json={**BODY, "gpu_count": 8})
    assert response.status_code == 201


async def test_the_lead_can_supply_the_gpu_capacity(tmp_path: Any) -> None:
    from .conftest import read_model_of, running_stack

    async with (
        read_model_of("memory") as model,
        running_stack(tmp_path, model, max_gpus_per_host=lambda: 1) as (stack, _),
    ):
        response = await stack.client.post(stack.url("/jobs"), json={**BODY, "gpu_count": 2})
        problem(response, 422, "unsatisfiable")


# --- start, stop, export, priority, delete --------------------------------------------------


async def test_start_releases_a_held_job_and_is_a_no_op_on_a_queued_one(stack: Stack) -> None:
    await stack.create(job_id="h", auto_start=False)
    response = await stack.client.post(stack.url("/jobs/h/start"))
    assert response.status_code == 200
    assert response.json() == {
        "job_id": "h",
        "status": "queued",
        "message": "job h released from hold and queued",
        "changed": True,
    }
    await stack.settled()
    again = await stack.client.post(stack.url("/jobs/h/start"))
    assert again.status_code == 200
    assert again.json()["changed"] is False
    assert again.json()["status"] == "queued"
    assert "already queued" in again.json()["message"]


async def test_start_resumes_a_stopped_job(stack: Stack) -> None:
    await stack.create(job_id="s")
    await stack.client.post(stack.url("/jobs/s/stop"))
    await stack.settled()
    response = await stack.client.post(stack.url("/jobs/s/start"))
    assert response.json()["status"] == "queued"
    assert response.json()["changed"] is True


async def test_start_of_a_finished_or_unknown_job_is_refused(stack: Stack) -> None:
    await stack.create(job_id="done")
    await stack.start("done")
    await stack.succeed("done")
    problem(await stack.client.post(stack.url("/jobs/done/start")), 409, "invalid_transition")
    problem(await stack.client.post(stack.url("/jobs/ghost/start")), 404, "job_not_found")


async def test_stop_a_queued_job_stops_it_at_once_and_a_running_one_asks(stack: Stack) -> None:
    await stack.create(job_id="q")
    response = await stack.client.post(stack.url("/jobs/q/stop"))
    assert response.status_code == 200
    assert response.json()["status"] == "stopped"
    await stack.create(job_id="r")
    await stack.start("r")
    running = await stack.client.post(stack.url("/jobs/r/stop"))
    assert running.json()["status"] == "stopping"
    await stack.settled()
    again = await stack.client.post(stack.url("/jobs/r/stop"))
    assert again.status_code == 200
    assert again.json()["changed"] is False
    assert (await stack.job("r")).status == "stopping"
    problem(await stack.client.post(stack.url("/jobs/q/stop")), 409, "invalid_transition")


async def test_export_needs_a_checkpoint_then_requests_one(stack: Stack) -> None:
    await stack.create(job_id="x")
    await stack.start("x")
    problem(await stack.client.post(stack.url("/jobs/x/export")), 409, "invalid_transition")
    await stack.send(c.ReportStopped(job_id="x", attempt=1, runner_id="runner-1"))
    problem(await stack.client.post(stack.url("/jobs/x/export")), 409, "no_checkpoint")
    await stack.client.post(stack.url("/jobs/x/start"))
    await stack.settled()
    await stack.start("x")
    path = await stack.checkpoint("x", 50)
    await stack.succeed("x")
    response = await stack.client.post(stack.url("/jobs/x/export"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["changed"] is True
    assert body["export_id"] == "x-export-1"
    assert body["checkpoint"] == path
    assert body["export_status"] == "requested"
    busy = await stack.client.post(stack.url("/jobs/x/export"), json={"overwrite": True})
    problem(busy, 409, "invalid_transition")
    await stack.send(
        c.ReportExportSucceeded(
            job_id="x", export_id="x-export-1", runner_id="runner-1", artifact_path="out/merged"
        )
    )
    same = await stack.client.post(
        stack.url("/jobs/x/export"), json={"checkpoint": "checkpoint-50"}
    )
    assert same.status_code == 200
    assert same.json()["changed"] is False
    assert same.json()["artifact_path"] == "out/merged"
    problem(
        await stack.client.post(stack.url("/jobs/x/export"), json={"checkpoint": "checkpoint-9"}),
        409,
        "no_checkpoint",
    )


async def test_export_body_is_validated(memory_stack: Stack) -> None:
    await memory_stack.create(job_id="x")
    response = await memory_stack.client.post(
        memory_stack.url("/jobs/x/export"), json={"overwrite": "yes"}
    )
    problem(response, 422, "validation_error")
    response = await memory_stack.client.post(memory_stack.url("/jobs/x/export"), json={"nope": 1})
    problem(response, 422, "validation_error")


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_priority_changes_only_while_waiting(stack: Stack, method: str) -> None:
    await stack.create(job_id="p", priority=2)
    response = await stack.client.request(
        method, stack.url("/jobs/p/priority"), json={"priority": 8}
    )
    assert response.status_code == 200, response.text
    assert response.json()["priority"] == 8
    assert response.json()["changed"] is True
    assert (await stack.job("p")).priority == 8
    same = await stack.client.request(method, stack.url("/jobs/p/priority"), json={"priority": 8})
    assert same.json()["changed"] is False
    await stack.start("p")
    refused = await stack.client.request(
        method, stack.url("/jobs/p/priority"), json={"priority": 1}
    )
    problem(refused, 409, "invalid_transition")
    for bad in ({"priority": 11}, {"priority": "3"}, {}, {"priority": 3, "x": 1}):
        problem(
            await stack.client.request(method, stack.url("/jobs/p/priority"), json=bad),
            422,
            "validation_error",
        )
    problem(
        await stack.client.request(method, stack.url("/jobs/nope/priority"), json={"priority": 1}),
        404,
        "job_not_found",
    )


async def test_delete_removes_a_job_and_refuses_an_active_one(stack: Stack) -> None:
    await stack.create(job_id="d")
    response = await stack.client.delete(stack.url("/jobs/d"))
    assert response.status_code == 204
    assert response.content == b""
    await stack.settled()
    problem(await stack.client.get(stack.url("/jobs/d")), 404, "job_not_found")
    problem(await stack.client.delete(stack.url("/jobs/d")), 404, "job_not_found")
    await stack.create(job_id="busy")
    await stack.start("busy")
    details = problem(await stack.client.delete(stack.url("/jobs/busy")), 409, "invalid_transition")
    assert "stop it first" in details["detail"]


# --- reads ----------------------------------------------------------------------------------


async def test_status_is_a_small_view_of_the_job(stack: Stack) -> None:
    await stack.create(job_id="st", priority=7)
    await stack.start("st", gpus=(3,))
    response = await stack.client.get(stack.url("/jobs/st/status"))
    assert response.status_code == 200
    body = response.json()
    assert body["job_id"] == "st"
    assert body["status"] == "running"
    assert body["priority"] == 7
    assert body["runner_id"] == "runner-1"
    assert body["gpu_ids"] == [3]
    assert body["attempt"] == 1
    assert body["submitted_at"] and body["started_at"]
    assert "train_args" not in body
    problem(await stack.client.get(stack.url("/jobs/none/status")), 404, "job_not_found")
    problem(await stack.client.get(stack.url("/jobs/bad%20id/status")), 422, "validation_error")


async def test_progress_and_its_history(stack: Stack) -> None:
    await stack.create(job_id="pr")
    empty = (await stack.client.get(stack.url("/jobs/pr/progress"))).json()
    assert empty["step"] is None
    assert empty["status"] == "queued"
    await stack.start("pr")
    for step in (10, 20, 30):
        await stack.progress("pr", step)
    body = (await stack.client.get(stack.url("/jobs/pr/progress"))).json()
    assert body["step"] == 30
    assert body["max_steps"] == 100
    assert body["percent"] == 30.0
    assert body["loss"] == pytest.approx(2.0 / 30)
    assert body["remaining_s"] == 700.0
    assert body["remaining"] == "about 12 minutes"
    assert body["history"] is None
    with_history = (await stack.client.get(stack.url("/jobs/pr/progress?history=true"))).json()
    assert [point["step"] for point in with_history["history"]] == [10, 20, 30]
    problem(await stack.client.get(stack.url("/jobs/none/progress")), 404, "job_not_found")


async def test_details_show_the_whole_job(stack: Stack) -> None:
    await stack.create(
        job_id="det", train_args={"lora_rank": 8}, labels={"team": "vision"}, gpu_name="H100"
    )
    body = (await stack.client.get(stack.url("/jobs/det"))).json()
    assert body["job_id"] == "det"
    assert body["train_args"] == {"lora_rank": 8}
    assert body["labels"] == {"team": "vision"}
    assert body["gpu_name"] == "H100"
    assert body["data_path"] == "AI-ModelScope/coco#200"


async def test_list_pages_without_gaps_or_duplicates(stack: Stack) -> None:
    ids = [await stack.create(job_id=f"j{i}", priority=i % 3) for i in range(7)]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await stack.client.get(stack.url("/jobs"), params=params)).json()
        seen.extend(job["job_id"] for job in page["items"])
        # A job created mid-walk lands before the cursor: it must not shift later pages.
        if cursor is None:
            await stack.create(job_id="late")
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids)), "newest first, each job once"
    filtered = (await stack.client.get(stack.url("/jobs"), params={"priority": 2})).json()
    assert {job["job_id"] for job in filtered["items"]} == {"j2", "j5"}
    await stack.start("j0")
    running = (await stack.client.get(stack.url("/jobs"), params={"status": "running"})).json()
    assert [job["job_id"] for job in running["items"]] == ["j0"]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("limit=0", "validation_error"),
        ("limit=1001", "validation_error"),
        ("limit=ten", "validation_error"),
        ("status=bogus", "validation_error"),
        ("priority=11", "validation_error"),
        ("cursor=garbage", "invalid_cursor"),
    ],
)
async def test_list_rejects_bad_parameters(memory_stack: Stack, query: str, code: str) -> None:
    problem(await memory_stack.client.get(memory_stack.url(f"/jobs?{query}")), 422, code)


async def test_logs_tail_and_page_forward(stack: Stack) -> None:
    await stack.create(job_id="lg")
    lines = [LogLine(seq=i, text=f"line {i}") for i in range(1, 8)]
    await stack.read_model.append_logs("lg", lines)
    tail = (await stack.client.get(stack.url("/jobs/lg/logs?limit=2"))).json()
    assert [line["seq"] for line in tail["lines"]] == [6, 7]
    assert tail["next_after"] == 7
    collected: list[str] = []
    after = 0
    while True:
        page = (await stack.client.get(stack.url(f"/jobs/lg/logs?limit=3&after={after}"))).json()
        if not page["lines"]:
            assert page["next_after"] == after
            break
        collected.extend(line["text"] for line in page["lines"])
        after = page["next_after"]
    assert collected == [f"line {i}" for i in range(1, 8)]
    default = (await stack.client.get(stack.url("/jobs/lg/logs"))).json()
    assert len(default["lines"]) == 7, "limit defaults to the seed's 50"
    problem(await stack.client.get(stack.url("/jobs/none/logs")), 404, "job_not_found")
    problem(await stack.client.get(stack.url("/jobs/lg/logs?limit=0")), 422, "validation_error")


async def test_events_page_through_the_history(stack: Stack) -> None:
    await stack.create(job_id="ev")
    await stack.start("ev")
    await stack.progress("ev", 5)
    everything = (await stack.client.get(stack.url("/jobs/ev/events"))).json()
    types = [event["type"] for event in everything["events"]]
    assert types == ["JobSubmitted", "JobQueued", "JobScheduled", "JobStarted", "JobProgressed"]
    assert everything["has_more"] is False
    walked: list[int] = []
    after = 0
    while True:
        page = (await stack.client.get(stack.url(f"/jobs/ev/events?limit=2&after={after}"))).json()
        walked.extend(event["position"] for event in page["events"])
        if not page["has_more"]:
            break
        after = page["next_after"]
    assert walked == [event["position"] for event in everything["events"]]
    assert walked == sorted(set(walked))
    first = everything["events"][0]
    assert first["data"]["spec"]["model_path"] == "Qwen/Qwen2.5-0.5B"
    assert first["actor"] == "api"
    problem(await stack.client.get(stack.url("/jobs/none/events")), 404, "job_not_found")


JOB_ENDPOINTS = [
    ("POST", "/jobs/{}/start", None),
    ("POST", "/jobs/{}/stop", None),
    ("POST", "/jobs/{}/export", None),
    ("GET", "/jobs/{}/status", None),
    ("GET", "/jobs/{}/progress", None),
    ("GET", "/jobs/{}", None),
    ("DELETE", "/jobs/{}", None),
    ("GET", "/jobs/{}/logs", None),
    ("GET", "/jobs/{}/events", None),
    ("PUT", "/jobs/{}/priority", {"priority": 1}),
    ("PATCH", "/jobs/{}/priority", {"priority": 1}),
    ("DELETE", "/queue/{}", None),
    ("GET", "/queue/{}/status", None),
]


@pytest.mark.parametrize(("method", "path", "body"), JOB_ENDPOINTS)
async def test_every_job_endpoint_refuses_unknown_and_impossible_ids(
    memory_stack: Stack, method: str, path: str, body: dict[str, Any] | None
) -> None:
    client, url = memory_stack.client, memory_stack.url
    unknown = await client.request(method, url(path.format("ghost")), json=body)
    problem(unknown, 404, "job_not_found")
    invalid = await client.request(method, url(path.format("not%20an%20id")), json=body)
    problem(invalid, 422, "validation_error")


async def test_a_create_waits_for_the_schedulers_rank_by_default(stack: Stack) -> None:
    async def rank_when_seen(job_id: str) -> None:
        await wait_for(lambda: stack.read_model.get_job(job_id), what=f"{job_id} recorded")
        now = datetime.now(UTC)
        entry = QueueEntry(
            job_id=job_id, position=1, priority=5, estimated_start=now + timedelta(minutes=5)
        )
        view = QueueView(entries=(entry,), computed_at=now, as_of_position=10**9)
        await stack.read_model.set_queue_view(view)

    await stack.read_model.set_queue_view(QueueView(entries=(), computed_at=datetime.now(UTC)))
    ranker = asyncio.create_task(rank_when_seen("ranked"))
    response = await stack.client.post(stack.url("/jobs"), json={**BODY, "job_id": "ranked"})
    await ranker
    body = response.json()
    assert body["queue_position"] == 1, body
    assert body["queue_source"] == "scheduler"
    assert body["estimated_wait_time"] != "unknown"


async def test_prefer_wait_zero_answers_without_waiting_for_a_rank(stack: Stack) -> None:
    await stack.read_model.set_queue_view(QueueView(entries=(), computed_at=datetime.now(UTC)))
    response = await stack.client.post(
        stack.url("/jobs"), json={**BODY, "job_id": "now"}, headers={"Prefer": "wait=0"}
    )
    assert response.json()["queue_source"] == "scheduler_pending"
