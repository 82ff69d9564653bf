"""``/metrics`` on the API port: HTTP latency per route template, and the fleet gauges."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import REGISTRY

from swift_trainer.api.metrics import sample_fleet

from .conftest import Stack


async def test_metrics_answer_in_prometheus_text_with_routes_as_templates(
    memory_stack: Stack,
) -> None:
    job_id = await memory_stack.create(job_id="metered")
    assert (await memory_stack.client.get(memory_stack.url(f"/jobs/{job_id}"))).status_code == 200

    response = await memory_stack.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'path="/api/v1/training/jobs/{job_id}"' in text, "a route, not one job's URL"
    assert "metered" not in text
    assert "swift_trainer_http_request_duration_seconds_bucket" in text
    schema = (await memory_stack.client.get("/schema/openapi.json")).json()
    assert "/metrics" not in schema["paths"], "an operator endpoint, not part of the API"


async def test_the_fleet_gauges_follow_the_read_model(memory_stack: Stack) -> None:
    await memory_stack.create(job_id="gauged-1", auto_start=False)
    await memory_stack.create(job_id="gauged-2", auto_start=False)
    await memory_stack.create(job_id="gauged-3")
    await sample_fleet(memory_stack.read_model, now=datetime.now(UTC), lease_s=15)
    assert REGISTRY.get_sample_value("swift_trainer_jobs", {"status": "held"}) == 2
    assert REGISTRY.get_sample_value("swift_trainer_jobs", {"status": "queued"}) == 1
    assert REGISTRY.get_sample_value("swift_trainer_runners_alive") == 0
