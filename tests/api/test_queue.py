"""The queue endpoints: order, places, removal and the processor switch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from swift_trainer.projections.read_models import QueueEntry, QueueView
from swift_trainer.projections.scheduler.pass_result import PassResult, PlacedJob

from .conftest import Stack, read_model_of, running_stack
from .test_jobs import problem


async def test_queue_without_a_scheduler_follows_priority_then_submission(stack: Stack) -> None:
    await stack.create(job_id="a", priority=3)
    await stack.create(job_id="b", priority=8)
    await stack.create(job_id="c", priority=3)
    await stack.create(job_id="h", auto_start=False)
    await stack.create(job_id="r")
    await stack.start("r")
    body = (await stack.client.get(stack.url("/queue"))).json()
    assert body["source"] == "submission_order"
    assert [(e["job_id"], e["position"]) for e in body["entries"]] == [
        ("b", 1),
        ("a", 2),
        ("c", 3),
    ]
    assert all(e["estimated_wait_time"] == "unknown" for e in body["entries"])
    assert body["length"] == 3
    assert body["held"] == 1
    assert body["processor"] == {
        "state": "running",
        "paused": False,
        "reason": "",
        "changed_at": None,
    }


async def test_queue_shows_the_schedulers_view_with_estimates(stack: Stack) -> None:
    now = datetime.now(UTC)
    view = QueueView(
        entries=(
            QueueEntry(job_id="x", position=1, priority=9, estimated_start=now),
            QueueEntry(
                job_id="y", position=2, priority=4, estimated_start=now + timedelta(hours=2)
            ),
            QueueEntry(job_id="z", position=3, priority=1),
        ),
        computed_at=now,
        as_of_position=17,
    )
    await stack.read_model.set_queue_view(view)
    body = (await stack.client.get(stack.url("/queue"))).json()
    assert body["source"] == "scheduler"
    assert body["as_of_position"] == 17
    waits = [e["estimated_wait_time"] for e in body["entries"]]
    assert waits[0] == "less than a minute"
    assert waits[1] in {"about 2 hours", "about 1 hour 60 minutes", "about 1 hour 59 minutes"}
    assert waits[2] == "unknown"


async def test_process_asks_the_scheduler(stack: Stack) -> None:
    response = await stack.client.post(stack.url("/queue/process"))
    assert response.status_code == 200
    assert response.json()["processed"] is False
    assert "no scheduler" in response.json()["reason"]


async def test_process_passes_the_schedulers_answer_through(tmp_path: Path) -> None:
    async def place_now() -> PassResult:
        return PassResult(
            processed=True,
            leader="s1",
            placed=(PlacedJob("a", 1, "r1", (0, 1)),),
            queued=2,
        )

    async with (
        read_model_of("memory") as model,
        running_stack(tmp_path, model, process_queue=place_now) as (stack, _),
    ):
        response = await stack.client.post(stack.url("/queue/process"))
        assert response.status_code == 200
        assert response.json() == {
            "processed": True,
            "leader": "s1",
            "placed": [{"job_id": "a", "attempt": 1, "runner_id": "r1", "gpu_ids": [0, 1]}],
            "paused": False,
            "queued": 2,
            "unplaceable": [],
            "reason": None,
        }


async def test_removing_a_queued_job_stops_it(stack: Stack) -> None:
    await stack.create(job_id="q")
    response = await stack.client.delete(stack.url("/queue/q"))
    assert response.status_code == 200
    assert response.json()["status"] == "stopped"
    summary = await stack.job("q")
    assert summary.status == "stopped"
    assert summary.stop_reason == "removed from queue"
    problem(await stack.client.delete(stack.url("/queue/q")), 409, "invalid_transition")
    await stack.create(job_id="held", auto_start=False)
    problem(await stack.client.delete(stack.url("/queue/held")), 409, "invalid_transition")
    problem(await stack.client.delete(stack.url("/queue/ghost")), 404, "job_not_found")


async def test_queue_status_of_a_job(stack: Stack) -> None:
    await stack.create(job_id="first", priority=5)
    await stack.create(job_id="second", priority=5)
    body = (await stack.client.get(stack.url("/queue/second/status"))).json()
    assert body["in_queue"] is True
    assert body["position"] == 2
    assert body["priority"] == 5
    assert body["estimated_wait_time"] == "unknown"
    assert body["source"] == "submission_order"
    await stack.start("first")
    running = (await stack.client.get(stack.url("/queue/first/status"))).json()
    assert running == {
        "job_id": "first",
        "status": "running",
        "in_queue": False,
        "priority": 5,
        "position": None,
        "estimated_start": None,
        "estimated_wait_s": None,
        "estimated_wait_time": None,
        "source": None,
        "unplaceable": None,
        "blocked_by": None,
        "blocked_reason": None,
    }
    moved_up = (await stack.client.get(stack.url("/queue/second/status"))).json()
    assert moved_up["position"] == 1
    problem(await stack.client.get(stack.url("/queue/ghost/status")), 404, "job_not_found")


async def test_queue_status_uses_the_schedulers_estimate(stack: Stack) -> None:
    await stack.create(job_id="w")
    now = datetime.now(UTC)
    start = now + timedelta(minutes=5)
    await stack.read_model.set_queue_view(
        QueueView(
            entries=(QueueEntry(job_id="w", position=4, priority=5, estimated_start=start),),
            computed_at=now,
        )
    )
    body = (await stack.client.get(stack.url("/queue/w/status"))).json()
    assert body["position"] == 4
    assert body["source"] == "scheduler"
    assert body["estimated_wait_time"] in {"about 4 minutes", "about 5 minutes"}
    assert (body["unplaceable"], body["blocked_by"], body["blocked_reason"]) == (None, None, None)


async def test_queue_status_says_what_holds_a_job(stack: Stack) -> None:
    """The job's own place names the quota that holds it, as the queue view does."""
    await stack.create(job_id="held")
    reason = "owner 'ann' has 1 of its max_gpus 1 GPUs in use"
    await stack.read_model.set_queue_view(
        QueueView(
            entries=(
                QueueEntry(
                    job_id="held",
                    position=1,
                    priority=5,
                    blocked_by="owner_gpu_quota",
                    blocked_reason=reason,
                ),
            ),
            computed_at=datetime.now(UTC),
        )
    )
    body = (await stack.client.get(stack.url("/queue/held/status"))).json()
    assert (body["position"], body["blocked_by"], body["blocked_reason"]) == (
        1,
        "owner_gpu_quota",
        reason,
    )


async def test_processor_stop_start_and_status(stack: Stack) -> None:
    stopped = await stack.client.post(stack.url("/queue/processor/stop"))
    assert stopped.status_code == 200
    assert stopped.json() == {
        "state": "paused",
        "changed": True,
        "message": "queue processor paused",
    }
    await stack.settled()
    status = (await stack.client.get(stack.url("/queue/processor/status"))).json()
    assert status["state"] == "paused"
    assert status["paused"] is True
    assert status["changed_at"] is not None
    again = await stack.client.post(stack.url("/queue/processor/stop"))
    assert again.json()["changed"] is False
    started = await stack.client.post(stack.url("/queue/processor/start"))
    assert started.json() == {
        "state": "running",
        "changed": True,
        "message": "queue processor resumed",
    }
    await stack.settled()
    assert (await stack.client.get(stack.url("/queue/processor/status"))).json()[
        "state"
    ] == "running"
    assert (await stack.client.get(stack.url("/queue"))).json()["processor"]["state"] == "running"
