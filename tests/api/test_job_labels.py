"""Listing jobs by label (``GET /jobs?label=key=value``), on both read-model backends."""

from __future__ import annotations

from typing import Any

import pytest

from swift_trainer.api.jobs import labels

from .conftest import Stack
from .test_jobs import problem


async def walk(stack: Stack, **params: Any) -> tuple[list[str], int]:
    """Every job id the label listing yields, following cursors; and how many pages."""
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await stack.client.get(stack.url("/jobs"), params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages += 1
        seen.extend(job["job_id"] for job in body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return seen, pages


async def test_label_filter_pages_through_matches_only(stack: Stack) -> None:
    for i in range(7):
        team = "nlp" if i % 2 == 0 else "vision"
        await stack.create(job_id=f"l{i}", priority=5 + i % 2, labels={"team": team})
    await stack.create(job_id="unlabelled")

    seen, pages = await walk(stack, label="team=nlp", limit=2)
    assert seen == ["l6", "l4", "l2", "l0"], "newest first, each match once"
    assert pages == 2, "the last match ends the walk: no empty page after it"

    combined, _ = await walk(stack, label="team=vision", priority=6)
    assert combined == ["l5", "l3", "l1"]
    assert await walk(stack, label="team=") == ([], 1)
    assert await walk(stack, label=" team = nlp ", status="held") == ([], 1)


async def test_a_rare_label_gives_short_pages_that_keep_a_cursor(
    memory_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read 2 jobs per page and stop after 2: each request's work is bounded, not the walk.
    monkeypatch.setattr(labels, "MAX_PAGE_SIZE", 2)
    monkeypatch.setattr(labels, "MAX_SCANNED", 2)
    await memory_stack.create(job_id="old", labels={"rare": "yes"})
    for i in range(5):
        await memory_stack.create(job_id=f"plain{i}")
    first = (await memory_stack.client.get(memory_stack.url("/jobs?label=rare=yes"))).json()
    assert first["items"] == []
    assert first["next_cursor"], "an empty page still says where to go on"
    seen, pages = await walk(memory_stack, label="rare=yes")
    assert seen == ["old"]
    assert pages == 3


@pytest.mark.parametrize("label", ["team", "=nlp", "x"])
async def test_a_malformed_label_filter_is_a_422(memory_stack: Stack, label: str) -> None:
    response = await memory_stack.client.get(memory_stack.url("/jobs"), params={"label": label})
    body = problem(response, 422, "validation_error")
    assert "key=value" in body["detail"] or "label" in body["detail"]
