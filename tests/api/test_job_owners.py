"""Listing jobs by owner (``GET /jobs?owner=NAME``), on both read-model backends.

Owned jobs are submitted as the operator's CLI does it, with the owner in the spec (no
key needed); ``test_auth.py`` covers what a user key sees whatever it asks for.
"""

from __future__ import annotations

from typing import Any

import pytest

from swift_trainer.core import commands as c
from swift_trainer.core.spec import JobSpec

from .conftest import Stack
from .test_job_labels import walk
from .test_jobs import problem


async def submit_as(stack: Stack, job_id: str, owner: str | None, **spec: Any) -> None:
    fields: dict[str, Any] = {"data_path": "d#10", "model_path": "m", "output_dir": job_id, **spec}
    await stack.send(c.SubmitJob(job_id=job_id, spec=JobSpec(owner=owner, **fields)))


async def test_owner_filter_pages_through_that_owners_jobs(stack: Stack) -> None:
    for i in range(7):
        owner = ["alice", "bob", None][i % 3]
        await submit_as(stack, f"o{i}", owner, priority=5 + i % 2, labels={"n": str(i % 2)})
    seen, pages = await walk(stack, owner="alice", limit=2)
    assert seen == ["o6", "o3", "o0"]
    assert pages == 2
    assert (await walk(stack, owner="bob"))[0] == ["o4", "o1"]
    assert (await walk(stack, owner="alice", priority=5))[0] == ["o6", "o0"]
    assert (await walk(stack, owner="alice", status="queued", priority=6))[0] == ["o3"]
    assert (await walk(stack, owner="alice", label="n=0"))[0] == ["o6", "o0"]
    assert (await walk(stack, owner="carol"))[0] == []
    everyone, _ = await walk(stack)
    assert len(everyone) == 7


@pytest.mark.parametrize("owner", ["", "a:b", "-x", "x" * 65, "a b"])
async def test_a_malformed_owner_filter_is_a_422(memory_stack: Stack, owner: str) -> None:
    response = await memory_stack.client.get(memory_stack.url("/jobs"), params={"owner": owner})
    body = problem(response, 422, "validation_error")
    assert "owner" in str(body)


async def test_the_owner_filter_is_in_the_openapi_schema(memory_stack: Stack) -> None:
    schema = (await memory_stack.client.get("/schema/openapi.json")).json()
    listing = schema["paths"]["/api/v1/training/jobs"]["get"]
    owner = next(p for p in listing["parameters"] if p["name"] == "owner")
    assert owner["in"] == "query"
    assert "user" in owner["description"]
