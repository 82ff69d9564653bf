"""Error texts a person can act on: no regexes, no framework names, limits stated."""

from __future__ import annotations

from typing import Any

from .conftest import Stack
from .test_jobs import BODY, problem


async def test_a_bad_job_id_says_what_an_id_may_hold(memory_stack: Stack) -> None:
    response = await memory_stack.client.get(memory_stack.url("/jobs/bad!id"))
    body = problem(response, 422, "validation_error")
    assert "regex" not in response.text and "[A-Za-z" not in response.text
    assert "letters, digits" in body["detail"]


async def test_a_bad_query_names_its_source_as_query(memory_stack: Stack) -> None:
    response = await memory_stack.client.get(memory_stack.url("/jobs"), params={"limit": "x"})
    body = problem(response, 422, "validation_error")
    assert "ParamType" not in response.text
    assert body["errors"][0]["source"] == "query"


async def test_an_oversized_body_states_the_limit(memory_stack: Stack) -> None:
    body = {**BODY, "labels": {"x": "y" * (2 * 1024 * 1024)}}
    response = await memory_stack.client.post(memory_stack.url("/jobs"), json=body)
    assert "1 MiB" in problem(response, 413, "payload_too_large")["detail"]


async def test_an_unknown_train_arg_lists_the_known_ones(memory_stack: Stack) -> None:
    body: dict[str, Any] = {**BODY, "train_args": {"learning_rat": 1e-4}}
    response = await memory_stack.client.post(memory_stack.url("/jobs"), json=body)
    detail = problem(response, 422, "validation_error")["detail"]
    assert "learning_rat" in detail
    assert "learning_rate" in detail and "max_steps" in detail
