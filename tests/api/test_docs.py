"""The docs at /docs, and an OpenAPI document that lists every endpoint the seed promised."""

from __future__ import annotations

from typing import Any

import pytest

from swift_trainer.core.job import JobStatus

from .conftest import Stack

#: SEED.md's endpoint table: method, path under the prefix, success status.
SEED_ENDPOINTS = [
    ("post", "/training/jobs", "201"),
    ("post", "/training/jobs/{job_id}/start", "200"),
    ("post", "/training/jobs/{job_id}/stop", "200"),
    ("post", "/training/jobs/{job_id}/export", "200"),
    ("get", "/training/jobs/{job_id}/status", "200"),
    ("get", "/training/jobs/{job_id}/progress", "200"),
    ("get", "/training/jobs/{job_id}", "200"),
    ("get", "/training/jobs", "200"),
    ("delete", "/training/jobs/{job_id}", "204"),
    ("get", "/training/jobs/{job_id}/logs", "200"),
    ("get", "/training/jobs/{job_id}/events", "200"),
    ("get", "/training/gpus", "200"),
    ("get", "/training/system/status", "200"),
    ("get", "/training/health", "200"),
    ("get", "/training/queue", "200"),
    ("post", "/training/queue/process", "200"),
    ("delete", "/training/queue/{job_id}", "200"),
    ("get", "/training/queue/{job_id}/status", "200"),
    ("post", "/training/queue/processor/start", "200"),
    ("post", "/training/queue/processor/stop", "200"),
    ("get", "/training/queue/processor/status", "200"),
]


@pytest.fixture
async def openapi(memory_stack: Stack) -> dict[str, Any]:
    response = await memory_stack.client.get("/schema/openapi.json")
    assert response.status_code == 200
    spec: dict[str, Any] = response.json()
    return spec


async def test_docs_is_an_interactive_page(memory_stack: Stack) -> None:
    response = await memory_stack.client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in response.text
    assert "/api/v1/training/jobs" in response.text, "the page embeds the API's schema"
    assert (await memory_stack.client.get("/schema/swagger")).status_code == 200


@pytest.mark.parametrize(("method", "path", "status"), SEED_ENDPOINTS)
def test_every_seed_endpoint_is_documented(
    openapi: dict[str, Any], method: str, path: str, status: str
) -> None:
    operation = openapi["paths"]["/api/v1" + path][method]
    assert status in operation["responses"]


def test_errors_are_documented_as_problem_details(openapi: dict[str, Any]) -> None:
    create = openapi["paths"]["/api/v1/training/jobs"]["post"]
    for status in ("400", "409", "413", "422", "503"):
        content = create["responses"][status]["content"]
        assert "application/problem+json" in content
    problem = openapi["components"]["schemas"]["ProblemDetails"]
    assert {"type", "title", "status", "detail", "code"} <= set(problem["required"])


def test_the_create_schema_carries_its_constraints(openapi: dict[str, Any]) -> None:
    schema = openapi["components"]["schemas"]["CreateJobRequest"]
    # The dataset is data_path or an uploaded training_file: neither alone is required.
    assert set(schema["required"]) == {"model_path"}
    assert {"data_path", "training_file"} <= set(schema["properties"])
    assert schema["properties"]["priority"]["maximum"] == 10
    assert schema["properties"]["priority"]["minimum"] == 0
    assert "TrainArgs" in str(schema["properties"]["train_args"])


def test_the_docs_name_every_status_a_job_shows(openapi: dict[str, Any]) -> None:
    details = openapi["paths"]["/api/v1/training/jobs/{job_id}"]["get"]["description"]
    for status in JobStatus:
        if status in (JobStatus.NEW, JobStatus.DELETED):
            continue
        assert f"`{status.value}`" in openapi["info"]["description"], status
        assert status.value in details, status


def test_streams_are_documented_as_event_streams(openapi: dict[str, Any]) -> None:
    for path in ("logs", "events", "progress"):
        operation = openapi["paths"][f"/api/v1/training/jobs/{{job_id}}/{path}/stream"]["get"]
        assert "text/event-stream" in operation["responses"]["200"]["content"]
    headers = {
        p["name"]
        for p in openapi["paths"]["/api/v1/training/jobs"]["post"]["parameters"]
        if p["in"] == "header"
    }
    assert "Idempotency-Key" in headers


def test_processing_the_queue_has_a_typed_answer(openapi: dict[str, Any]) -> None:
    operation = openapi["paths"]["/api/v1/training/queue/process"]["post"]
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    schemas = openapi["components"]["schemas"]
    schema = schemas[ref.rsplit("/", 1)[1]]
    assert set(schema["properties"]) == {
        "processed",
        "leader",
        "placed",
        "paused",
        "queued",
        "unplaceable",
        "reason",
    }
    assert {"processed", "leader"} <= set(schema["required"])
    assert "PlacedJob" in str(schema["properties"]["placed"])


def _open_objects(node: Any, path: str) -> list[str]:
    """Schemas that accept any object: what a ``dict[str, Any]`` becomes in OpenAPI."""
    found: list[str] = []
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" not in node:
            extra = node.get("additionalProperties", True)
            if extra is True or extra == {}:
                found.append(path)
        for key, value in node.items():
            found += _open_objects(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _open_objects(value, f"{path}/{i}")
    return found


#: Open on purpose: an event's payload, whose schema per ``type`` is the event contract.
_OPEN_BY_DESIGN = ["#/components/schemas/EventLogEntry/properties/data"]


def test_no_schema_is_an_untyped_object(openapi: dict[str, Any]) -> None:
    """Issue 10: every body is typed end to end, so clients can generate code from it."""
    found = _open_objects(openapi["components"]["schemas"], "#/components/schemas")
    assert found == _OPEN_BY_DESIGN
    assert _open_objects(openapi["paths"], "#/paths") == []
