"""``GET /asyncapi.json`` serves the same contract the code generates and CI checks."""

from __future__ import annotations

import json

from swift_trainer.bus.event_contract import asyncapi_document, render

from .conftest import Stack


async def test_asyncapi_document_is_served(memory_stack: Stack) -> None:
    response = await memory_stack.client.get("/asyncapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == json.loads(render(asyncapi_document()))
    assert "/asyncapi.json" not in (await memory_stack.client.get("/schema/openapi.json")).text
