"""The published contract: up to date with the code, valid AsyncAPI 3.0, true to the wire.

"True to the wire": real events (made by the domain) and real command envelopes, encoded
exactly as the relay and the command client put them on NATS, validate against the
schemas in the document, and a broken one does not.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import msgspec
import pydantic
import pytest
from tests.projections.read_models.history import random_history

from swift_trainer.bus.event_contract import (
    ASYNCAPI_FILE,
    COMMAND_TYPES,
    PUBLISHED_EVENT_TYPES,
    SCHEMAS_FILE,
    asyncapi_document,
    json_schema_document,
    stale_files,
)
from swift_trainer.bus.messages import CommandEnvelope, EventEnvelope, encode
from swift_trainer.cli import main
from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.spec import JobSpec

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "contract"

with warnings.catch_warnings():
    # asyncapi3 names a field "schema", which pydantic warns about at import.
    warnings.simplefilter("ignore", UserWarning)
    from asyncapi3 import AsyncAPI3


def test_committed_files_match_a_fresh_generation() -> None:
    assert stale_files(COMMITTED) == [], "run 'uv run swift-trainer contract' and commit"


def test_check_command_fails_on_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "contract"
    shutil.copytree(COMMITTED, copy)
    assert main(["contract", "--check", "--out", str(copy)]) == 0
    document = json.loads((copy / ASYNCAPI_FILE).read_text())
    del document["components"]["schemas"]["JobSucceeded"]["properties"]["output_path"]
    (copy / ASYNCAPI_FILE).write_text(json.dumps(document))
    assert main(["contract", "--check", "--out", str(copy)]) == 1
    assert f"stale: {copy / ASYNCAPI_FILE}" in capsys.readouterr().err


def test_the_document_is_valid_asyncapi_3() -> None:
    document = asyncapi_document()
    assert document["asyncapi"] == "3.0.0"
    AsyncAPI3.model_validate(document)
    broken = json.loads(json.dumps(document))
    broken["operations"]["receiveEvents"]["action"] = "listen"
    with pytest.raises(pydantic.ValidationError):
        AsyncAPI3.model_validate(broken)


def _values(node: Any, key: str) -> Iterator[Any]:
    if isinstance(node, dict):
        for name, value in node.items():
            if name == key:
                yield value
            yield from _values(value, key)
    elif isinstance(node, list):
        for item in node:
            yield from _values(item, key)


def test_discriminators_are_property_names_as_asyncapi_wants() -> None:
    """The official AsyncAPI 3.0 JSON Schema (asyncapi/spec-json-schemas) requires a string
    here; msgspec writes OpenAPI's object form, which the object model above lets through."""
    found = list(_values(asyncapi_document(), "discriminator"))
    assert found, "tagged unions carry a discriminator"
    assert set(found) == {"type"}


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_every_reference_resolves_and_every_type_is_described() -> None:
    document = asyncapi_document()
    for ref in set(_refs(document)):
        assert _resolve(document, ref) is not None, ref
    schemas = document["components"]["schemas"]
    for name in (*PUBLISHED_EVENT_TYPES, *COMMAND_TYPES):
        assert schemas[name]["x-schema-version"] >= 1
    events_channel = document["channels"]["events"]
    assert set(events_channel["messages"]) == set(PUBLISHED_EVENT_TYPES)
    assert {"JobSucceeded", "WebhookDelivered"} <= set(PUBLISHED_EVENT_TYPES)
    headers = schemas["EventHeaders"]
    assert {"Nats-Msg-Id", "traceparent"} <= set(headers["properties"])
    guarantees = document["info"]["x-delivery-guarantees"]
    assert {"delivery", "deduplication", "order"} <= set(guarantees)
    streams = {s["name"]: s for s in document["info"]["x-jetstream-streams"]}
    assert streams["EVENTS"]["subjects"] == ["st.events.>"]


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A validator for ``schema`` whose ``#/...`` references resolve inside ``document``."""
    root = {**{k: v for k, v in document.items() if k != "$ref"}, **schema}
    return jsonschema_rs.Draft202012Validator(root)


def test_real_events_validate_against_their_message_payloads() -> None:
    document = asyncapi_document()
    messages = document["components"]["messages"]
    history = random_history(3, jobs=5, steps=200)
    seen: set[str] = set()
    for recorded in history.records:
        wire = json.loads(encode(EventEnvelope.from_recorded(recorded)))
        validator = _validator(document, messages[recorded.type]["payload"])
        assert validator.is_valid(wire), (recorded.type, wire)
        seen.add(recorded.type)
        # The same envelope claiming another type, or missing a field, is refused.
        assert not validator.is_valid({**wire, "type": "Other"})
        assert not validator.is_valid({k: v for k, v in wire.items() if k != "event_id"})
    assert len(seen) >= 10, seen


def test_command_envelopes_validate_and_broken_ones_do_not() -> None:
    document = asyncapi_document()
    validator = _validator(document, document["components"]["messages"]["Command"]["payload"])
    spec = JobSpec(data_path="d#1", model_path="m", output_dir="output/x")
    for command in (
        c.SubmitJob(job_id="x", spec=spec),
        c.StopJob(job_id="x", reason="done"),
        c.ChangePriority(job_id="x", priority=9),
        c.PauseQueueProcessor(reason="maintenance"),
    ):
        wire = json.loads(encode(CommandEnvelope(command_id="c-1", command=command, actor="t")))
        assert validator.is_valid(wire), wire
    bad = json.loads(encode(CommandEnvelope(command_id="c-2", command=c.StartJob(job_id="x"))))
    bad["command"]["type"] = "LaunchMissiles"
    assert not validator.is_valid(bad)


def test_the_json_schema_document_is_valid_and_covers_every_message() -> None:
    document = json_schema_document()
    jsonschema_rs.meta.validate(document)
    validator = jsonschema_rs.Draft202012Validator(document)
    event = e.JobSucceeded(
        at=random_history(1, steps=1).records[0].recorded_at, job_id="x", attempt=1
    )
    assert validator.is_valid(msgspec.to_builtins(event))
    assert not validator.is_valid({"type": "JobSucceeded", "job_id": "x"})
    assert json.loads((COMMITTED / SCHEMAS_FILE).read_text()) == document


def test_webhook_records_validate_against_their_message_payloads() -> None:
    from datetime import UTC, datetime

    from swift_trainer.core import webhook_events as w
    from swift_trainer.core.store import EventMetadata, RecordedEvent

    document = asyncapi_document()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    event = w.WebhookDeliveryFailed(
        at=at,
        webhook_id="ops",
        position=7,
        event_id="e7",
        event_type="JobFailed",
        attempt=2,
        error="HTTP 503",
        status_code=503,
        retry_at=at,
    )
    recorded = RecordedEvent(
        position=9,
        stream_id="webhook-ops",
        version=3,
        event_id="x",
        type="WebhookDeliveryFailed",
        schema_version=1,
        payload=w.encode_webhook_event(event),
        metadata=EventMetadata(actor="webhooks"),
        recorded_at=at,
    )
    wire = json.loads(encode(EventEnvelope.from_recorded(recorded)))
    payload = document["components"]["messages"]["WebhookDeliveryFailed"]["payload"]
    validator = _validator(document, payload)
    assert validator.is_valid(wire)
    wire["event"]["attempt"] = "two"
    assert not validator.is_valid(wire)
