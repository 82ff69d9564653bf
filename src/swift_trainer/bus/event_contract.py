"""The published event contract: JSON Schema for every message and an AsyncAPI 3.0 document.

Both are generated from the code (the msgspec types, ``subjects``, the stream configs), never
written by hand, so they cannot say something the code does not do. ``swift-trainer
contract`` writes them to ``docs/contract/``; a test regenerates them and compares with the
committed files, so a change to a message type that forgets the contract fails CI; the API
serves the same document at ``/asyncapi.json``.

Versioning, as the document states for consumers: every event and command carries a
``schema_version`` (``x-schema-version`` on its schema). A schema only grows by optional
fields with defaults, so a consumer must ignore fields it does not know. A change that
cannot be made that way bumps the version and registers an upcaster
(``core.events.UPCASTERS``) that rewrites older payloads; the store keeps every payload as
written, and readers in this codebase upcast on read.
"""

from __future__ import annotations

import inspect
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Final

import msgspec

from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core import webhook_events as w
from swift_trainer.core.access import ACCESS_EVENT_TYPES

from . import subjects
from .connection import events_stream_config, logs_stream_config
from .messages import CommandEnvelope, CommandReply, EventEnvelope, LogBatch, LogMessage

ASYNCAPI_FILE: Final = "asyncapi.json"
SCHEMAS_FILE: Final = "messages.schema.json"

COMMAND_TYPES: Final[dict[str, type[c.Command]]] = {
    cls.__name__: cls for cls in c.AnyCommand.__args__
}
#: Everything on the EVENTS stream: job and system events, and webhook delivery records.
PUBLISHED_EVENT_TYPES: Final[dict[str, type[e.Event] | type[w.WebhookEvent]]] = {
    **e.EVENT_TYPES,
    **w.WEBHOOK_EVENT_TYPES,
    **ACCESS_EVENT_TYPES,
}

_REF: Final = "#/components/schemas/{name}"

DELIVERY: Final = {
    "delivery": "at-least-once: every stored event reaches the EVENTS stream at least once, "
    "also when a process dies between the SQL commit and the publish",
    "deduplication": "by event id: the Nats-Msg-Id header and the payload's event_id are the "
    "same; JetStream drops a republished id within its duplicate window, a consumer should "
    "remember the ids (or the St-Position) it has handled",
    "order": "per stream (a job's events arrive in version order); the EVENTS stream as a "
    "whole is in global position order (St-Position), as the store committed them",
    "retention": "the EVENTS stream keeps every event; the LOGS stream is bounded by size "
    "and age. The SQL event store, not the stream, is the source of truth",
}

VERSIONING: Final = (
    "Each event and command schema carries x-schema-version (the payload's schema_version "
    "field on the envelope). Schemas only grow by optional fields with defaults: ignore "
    "fields you do not know. A change that cannot be expressed that way bumps the version; "
    "the service upcasts older payloads on read (core.events.UPCASTERS), and a consumer "
    "that decodes payloads itself should branch on schema_version."
)

_EVENT_HEADERS: Final = {
    "type": "object",
    "properties": {
        "Nats-Msg-Id": {
            "type": "string",
            "description": "The event id; JetStream deduplicates on it.",
        },
        "St-Position": {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": "The event's global position in the event store.",
        },
        "St-Type": {"type": "string", "description": "The event type (also the last token)."},
        "St-Stream": {"type": "string", "description": "The store stream, e.g. job-<job_id>."},
        "Nats-Expected-Last-Msg-Id": {
            "type": "string",
            "description": "The previous event's id: JetStream refuses an out-of-order publish.",
        },
        "traceparent": {"type": "string", "description": "W3C trace context of the command."},
        "tracestate": {"type": "string", "description": "W3C trace state."},
    },
    "required": ["Nats-Msg-Id", "St-Position", "St-Type", "St-Stream"],
}

_TRACE_HEADERS: Final = {
    "type": "object",
    "properties": {
        "traceparent": {"type": "string", "description": "W3C trace context."},
        "tracestate": {"type": "string", "description": "W3C trace state."},
    },
}


def _package_version() -> str:
    try:
        return version("swift-trainer")
    except PackageNotFoundError:  # pragma: no cover - a bare source tree
        return "0.0.0"


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    own = cls.__dict__.get("__doc__")
    return (doc.split("\n\n")[0].replace("\n", " ") if own else "") or cls.__name__


def message_schemas() -> dict[str, Any]:
    """JSON Schema components for every event, command and envelope, with their versions."""
    types: list[Any] = [
        EventEnvelope,
        CommandEnvelope,
        CommandReply,
        LogMessage,
        LogBatch,
        *PUBLISHED_EVENT_TYPES.values(),
        *COMMAND_TYPES.values(),
    ]
    _, components = msgspec.json.schema_components(types, ref_template=_REF)
    versioned: list[tuple[str, type[e.Event] | type[w.WebhookEvent] | type[c.Command]]] = [
        *PUBLISHED_EVENT_TYPES.items(),
        *COMMAND_TYPES.items(),
    ]
    for name, cls in versioned:
        components[name]["x-schema-version"] = cls.schema_version
    components["EventHeaders"] = _EVENT_HEADERS
    components["TraceHeaders"] = _TRACE_HEADERS
    return {name: _asyncapi_schema(schema) for name, schema in sorted(components.items())}


def _asyncapi_schema(node: Any) -> Any:
    """msgspec writes OpenAPI's ``discriminator`` object; AsyncAPI's is the property name."""
    if isinstance(node, dict):
        return {
            key: (
                value["propertyName"]
                if key == "discriminator" and isinstance(value, dict)
                else _asyncapi_schema(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_asyncapi_schema(item) for item in node]
    return node


def json_schema_document() -> dict[str, Any]:
    """A stand-alone JSON Schema (2020-12) holding every message type under ``$defs``."""
    text = json.dumps(message_schemas()).replace('"#/components/schemas/', '"#/$defs/')
    defs = json.loads(text)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://swift-trainer.invalid/contract/messages.schema.json",
        "title": "swift-trainer messages",
        "description": VERSIONING,
        "$defs": defs,
        "oneOf": [{"$ref": f"#/$defs/{name}"} for name in (*PUBLISHED_EVENT_TYPES, *COMMAND_TYPES)],
    }


def _event_message(name: str, cls: type[e.Event] | type[w.WebhookEvent]) -> dict[str, Any]:
    return {
        "name": name,
        "title": name,
        "summary": _summary(cls),
        "contentType": "application/json",
        "headers": {"$ref": _REF.format(name="EventHeaders")},
        "payload": {
            "allOf": [
                {"$ref": _REF.format(name="EventEnvelope")},
                {
                    "type": "object",
                    "properties": {
                        "type": {"const": name},
                        "schema_version": {"type": "integer", "maximum": cls.schema_version},
                        "event": {"$ref": _REF.format(name=name)},
                    },
                },
            ]
        },
        "x-schema-version": cls.schema_version,
    }


def _stream(config: Any) -> dict[str, Any]:
    data = config.as_dict()
    keep = (
        *("name", "description", "subjects", "retention", "storage", "duplicate_window"),
        *("max_age", "max_bytes", "max_msg_size", "discard"),
    )
    return {key: data[key] for key in keep if data.get(key) not in (None, -1, 0)}


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the NATS interface, deterministic for a given code."""
    event_names = list(PUBLISHED_EVENT_TYPES)
    messages: dict[str, Any] = {
        name: _event_message(name, cls) for name, cls in PUBLISHED_EVENT_TYPES.items()
    }
    messages["Command"] = {
        "name": "Command",
        "title": "Command request",
        "summary": "A command for the handler, sent as a NATS request; the reply says what "
        "was recorded.",
        "contentType": "application/json",
        "headers": {"$ref": _REF.format(name="TraceHeaders")},
        "payload": {"$ref": _REF.format(name="CommandEnvelope")},
    }
    messages["CommandReply"] = {
        "name": "CommandReply",
        "title": "Command reply",
        "summary": "ok with the events recorded, or an error code and message.",
        "contentType": "application/json",
        "payload": {"$ref": _REF.format(name="CommandReply")},
    }
    messages["LogLine"] = {
        "name": "LogLine",
        "title": "Training output line",
        "summary": _summary(LogMessage),
        "contentType": "application/json",
        "headers": {"$ref": _REF.format(name="TraceHeaders")},
        "payload": {"$ref": _REF.format(name="LogMessage")},
    }
    messages["LogLines"] = {
        "name": "LogLines",
        "title": "Training output lines read together",
        "summary": _summary(LogBatch),
        "contentType": "application/json",
        "headers": {"$ref": _REF.format(name="TraceHeaders")},
        "payload": {"$ref": _REF.format(name="LogBatch")},
    }
    ref = "#/components/messages/{name}"
    channel_ref = "#/channels/{channel}/messages/{name}"
    return {
        "asyncapi": "3.0.0",
        "id": "urn:swift-trainer:nats",
        "info": {
            "title": "swift-trainer events and commands",
            "version": _package_version(),
            "description": (
                "The NATS interface of swift-trainer. Subscribe to the JetStream EVENTS "
                "stream for every stored event; send commands as NATS requests.\n\n"
                + "\n".join(f"- **{key}**: {text}" for key, text in DELIVERY.items())
                + f"\n\n**Versions**: {VERSIONING}"
            ),
            "x-delivery-guarantees": DELIVERY,
            "x-jetstream-streams": [
                _stream(events_stream_config()),
                _stream(logs_stream_config()),
            ],
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "NATS_URL of the deployment (the embedded mode writes it to "
                "<data dir>/nats.url).",
            }
        },
        "channels": {
            "events": {
                "address": f"{subjects.EVENTS_ROOT}.{{kind}}.{{runner}}.{{key}}.{{eventType}}",
                "title": "Stored events",
                "description": (
                    f"JetStream stream {subjects.EVENTS_STREAM}. Filters: all events of a job "
                    f"`{subjects.job_events_filter('<job_id>')}`, one type "
                    f"`{subjects.event_type_filter('<EventType>')}`, what a runner acts on "
                    f"`{subjects.runner_events_filter('<runner_id>')}`."
                ),
                "parameters": {
                    "kind": {"enum": ["job", "system"], "description": "job or system stream"},
                    "runner": {
                        "description": "the addressed runner for "
                        + ", ".join(sorted(subjects.RUNNER_ADDRESSED))
                        + f"; `{subjects.NO_RUNNER}` otherwise"
                    },
                    "key": {
                        "description": "the job id, or the system stream's name "
                        f"(`{w.STREAM_PREFIX}<id>` for a webhook's delivery records)"
                    },
                    "eventType": {"enum": event_names, "description": "the event type"},
                },
                "messages": {name: {"$ref": ref.format(name=name)} for name in event_names},
            },
            "commands": {
                "address": f"{subjects.COMMANDS}.{{commandType}}",
                "title": "Commands",
                "description": "Request/reply to the command handlers (queue group "
                f"`{subjects.COMMAND_HANDLERS_QUEUE}`).",
                "parameters": {
                    "commandType": {"enum": list(COMMAND_TYPES), "description": "command type"}
                },
                "messages": {"Command": {"$ref": ref.format(name="Command")}},
            },
            "commandReplies": {
                "address": None,
                "title": "Command replies",
                "description": "The request's own NATS reply inbox.",
                "messages": {"CommandReply": {"$ref": ref.format(name="CommandReply")}},
            },
            "logs": {
                "address": f"{subjects.LOGS_ROOT}.{{jobId}}",
                "title": "Training output",
                "description": f"JetStream stream {subjects.LOGS_STREAM}.",
                "parameters": {"jobId": {"description": "the job id"}},
                "messages": {
                    "LogLine": {"$ref": ref.format(name="LogLine")},
                    "LogLines": {"$ref": ref.format(name="LogLines")},
                },
            },
        },
        "operations": {
            "receiveEvents": {
                "action": "receive",
                "channel": {"$ref": "#/channels/events"},
                "title": "Follow stored events",
                "summary": "A durable JetStream consumer on the EVENTS stream.",
                "description": "Acknowledge each message after handling it; on restart a "
                "durable consumer resumes after the last acknowledged one. Deduplicate by "
                "Nats-Msg-Id.",
                "messages": [
                    {"$ref": channel_ref.format(channel="events", name=name)}
                    for name in event_names
                ],
            },
            "sendCommand": {
                "action": "send",
                "channel": {"$ref": "#/channels/commands"},
                "title": "Send a command",
                "summary": "A NATS request; a retry with the same command_id gets the first "
                "answer and records nothing twice.",
                "messages": [{"$ref": channel_ref.format(channel="commands", name="Command")}],
                "reply": {
                    "channel": {"$ref": "#/channels/commandReplies"},
                    "messages": [
                        {"$ref": channel_ref.format(channel="commandReplies", name="CommandReply")}
                    ],
                },
            },
            "receiveLogs": {
                "action": "receive",
                "channel": {"$ref": "#/channels/logs"},
                "title": "Follow training output",
                "messages": [
                    {"$ref": channel_ref.format(channel="logs", name=name)}
                    for name in ("LogLine", "LogLines")
                ],
            },
        },
        "components": {"schemas": message_schemas(), "messages": messages},
    }


def render(document: dict[str, Any]) -> str:
    """Stable text: sorted keys would scramble the document's reading order, so none."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_contract(folder: Path) -> list[Path]:
    """Write both documents; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in (
        (ASYNCAPI_FILE, asyncapi_document()),
        (SCHEMAS_FILE, json_schema_document()),
    ):
        path = folder / name
        path.write_text(render(document), encoding="utf-8")
        written.append(path)
    return written


def stale_files(folder: Path) -> list[Path]:
    """The committed files that differ from a fresh generation (empty: up to date)."""
    stale = []
    for name, document in (
        (ASYNCAPI_FILE, asyncapi_document()),
        (SCHEMAS_FILE, json_schema_document()),
    ):
        path = folder / name
        if not path.exists() or path.read_text(encoding="utf-8") != render(document):
            stale.append(path)
    return stale
