"""HTTP series per route template, method and status, as the route middleware counts them."""

from __future__ import annotations

from prometheus_client import REGISTRY

from .conftest import Stack

ROUTE = "/api/v1/training/jobs/{job_id}/status"


def _sample(name: str, status: str) -> float:
    labels = {"method": "GET", "path": ROUTE, "status_code": status, "app_name": "swift-trainer"}
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_each_answer_is_counted_under_its_route_and_status(memory_stack: Stack) -> None:
    await memory_stack.create(job_id="counted")
    ok_before = _sample("swift_trainer_http_requests_total", "200")
    missing_before = _sample("swift_trainer_http_requests_total", "404")
    timed_before = _sample("swift_trainer_http_request_duration_seconds_count", "200")
    for job_id in ("counted", "counted", "absent"):
        await memory_stack.client.get(memory_stack.url(f"/jobs/{job_id}/status"))
    assert _sample("swift_trainer_http_requests_total", "200") == ok_before + 2
    assert _sample("swift_trainer_http_requests_total", "404") == missing_before + 1
    assert _sample("swift_trainer_http_request_duration_seconds_count", "200") == timed_before + 2
    assert _sample("swift_trainer_http_requests_in_progress", "200") == 0
    assert _sample("swift_trainer_http_requests_error_total", "404") == 0, "not a server error"
