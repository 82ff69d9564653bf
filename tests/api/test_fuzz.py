"""Nothing a client sends may produce a 5xx: random JSON at the write endpoints, random
query strings and ids at the reads, all through the real command path."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swift_trainer.api.jobs.schemas import CreateJobRequest
from swift_trainer.core.spec import TrainArgs

from .conftest import Stack

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["", "/", "..", "../x", "/abs", "a/b", "training_001", "C:\\x", "\x00"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
create_fields = st.sampled_from(list(msgspec.structs.fields(CreateJobRequest))).map(
    lambda f: f.name
)
train_arg_fields = st.sampled_from([f.name for f in msgspec.structs.fields(TrainArgs)])
train_args = st.dictionaries(train_arg_fields | st.text(max_size=8), values, max_size=4)
create_bodies = (
    st.fixed_dictionaries(
        {"data_path": st.text(max_size=40), "model_path": st.text(max_size=40)},
        optional={
            "priority": st.integers(-3, 13) | values,
            "output_dir": st.text(max_size=30) | values,
            "job_id": st.text(max_size=70) | values,
            "gpu_count": st.integers(-1, 70) | values,
            "train_args": train_args | values,
            "labels": st.dictionaries(st.text(max_size=140), st.text(max_size=300), max_size=3)
            | values,
            "auto_start": values,
            "max_retries": values,
            "min_gpu_memory_gb": values,
            "gpu_name": values,
        },
    )
    | st.dictionaries(create_fields | st.text(max_size=10), values, max_size=6)
    | values
)


async def _post(stack: Stack, path: str, body: Any, method: str = "POST") -> int:
    content = json.dumps(body).encode()
    response = await stack.client.request(
        method, stack.url(path), content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json")
    return response.status_code


@FUZZ
@given(body=create_bodies)
async def test_random_create_bodies_never_cause_a_5xx(memory_stack: Stack, body: Any) -> None:
    assert await _post(memory_stack, "/jobs", body) in {201, 400, 409, 422}


@FUZZ
@given(body=values | st.fixed_dictionaries({"priority": values}))
async def test_random_priority_bodies_never_cause_a_5xx(memory_stack: Stack, body: Any) -> None:
    if await memory_stack.read_model.get_job("fz") is None:
        await memory_stack.create(job_id="fz")
    assert await _post(memory_stack, "/jobs/fz/priority", body, "PATCH") in {200, 400, 422}


@FUZZ
@given(
    body=values | st.fixed_dictionaries({}, optional={"checkpoint": values, "overwrite": values})
)
async def test_random_export_bodies_never_cause_a_5xx(memory_stack: Stack, body: Any) -> None:
    assert await _post(memory_stack, "/jobs/nobody/export", body) in {400, 404, 422}


@FUZZ
@given(
    params=st.dictionaries(
        st.sampled_from(["status", "priority", "limit", "cursor", "after", "history"]),
        st.text(max_size=20),
        max_size=4,
    ),
    job_id=st.text(max_size=80),
    tail=st.sampled_from(["", "/status", "/progress", "/logs", "/events", "/start"]),
)
async def test_random_queries_and_ids_never_cause_a_5xx(
    memory_stack: Stack, params: dict[str, str], job_id: str, tail: str
) -> None:
    listing = await memory_stack.client.get(memory_stack.url("/jobs"), params=params)
    assert listing.status_code < 500, listing.text
    method = "POST" if tail == "/start" else "GET"
    path = memory_stack.url(f"/jobs/{quote(job_id, safe='')}{tail}")
    response = await memory_stack.client.request(method, path, params=params)
    assert response.status_code < 500, response.text
