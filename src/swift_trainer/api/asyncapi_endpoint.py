"""``GET /asyncapi.json``: the NATS contract, next to the OpenAPI document of the HTTP API.

Generated from the running code (``bus.contract``), so it always describes the messages this
server's components actually publish; built once per process.
"""

from __future__ import annotations

from functools import cache

from litestar import MediaType, get

from swift_trainer.bus.event_contract import asyncapi_document, render


@cache
def _document() -> bytes:
    return render(asyncapi_document()).encode()


@get("/asyncapi.json", include_in_schema=False, media_type=MediaType.JSON, sync_to_thread=False)
def asyncapi_json() -> bytes:
    """The AsyncAPI 3.0 document of the events, commands and logs on NATS."""
    return _document()
