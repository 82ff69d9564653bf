"""``swift-trainer webhooks``: register, list, remove, inspect and run webhook deliveries.

Registration is an admin's act recorded in the event store (``WebhookRegistered`` with the
actor), so these commands talk to the store directly, like ``audit``. ``up`` runs the
dispatcher; in the distributed mode run ``swift-trainer webhooks run`` once per deployment.

The signing key: ``WEBHOOK_SIGNING_KEY``, else ``<data dir>/webhook-signing.key`` (created
0600 on first use). Every process that registers or delivers must see the same key; each
webhook's secret is derived from it and printed by ``webhooks add``.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from ..core import webhook_events as w
from ..core.errors import SwiftTrainerError
from ..core.ids import is_valid_job_id, new_id
from ..core.settings import Settings
from ..core.shutdown import wait_for_shutdown
from ..core.sqlaudit import streams_with_prefix
from ..core.sqlstore import SqlEventStore, open_event_store
from ..projections.webhook_dispatcher import (
    WebhookDispatcher,
    load_signing_key,
    register_webhook,
    remove_webhook,
)


def add_webhooks_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hooks = sub.add_parser("webhooks", help="signed HTTP deliveries of events (admin)")
    actions = hooks.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="register a URL and an event filter")
    add.add_argument("url")
    add.add_argument("--id", dest="webhook_id", help="default: generated")
    add.add_argument(
        "--event",
        action="append",
        default=[],
        metavar="TYPE",
        help="an event type or pattern (JobSucceeded, Job*); repeat; none: every job event",
    )
    add.add_argument("--description", default="")
    remove = actions.add_parser("remove", help="stop delivering to a webhook")
    remove.add_argument("webhook_id")
    remove.add_argument("--reason", default="")
    deliveries = actions.add_parser("deliveries", help="a webhook's recorded attempts")
    deliveries.add_argument("webhook_id")
    actions.add_parser("list", help="registered webhooks and their delivery state")
    actions.add_parser("run", help="run the dispatcher (distributed mode; 'up' runs one)")
    for parser in (add, remove, deliveries, actions.choices["list"]):
        parser.add_argument("--output", "-o", choices=("table", "json"), default="table")


def _prepare_data_dir(settings: Settings) -> None:
    if settings.resolved_event_store_url.startswith("sqlite"):
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)


async def run_webhooks(settings: Settings, args: argparse.Namespace) -> int:
    _prepare_data_dir(settings)
    store = open_event_store(settings.resolved_event_store_url)
    try:
        await store.setup()
        if args.action == "run":
            return await _run_dispatcher(settings, store)
        return await _admin(settings, store, args)
    finally:
        await store.close()


async def _run_dispatcher(settings: Settings, store: SqlEventStore) -> int:
    dispatcher = WebhookDispatcher(store, load_signing_key(settings))
    await dispatcher.start()
    try:
        await wait_for_shutdown()
    finally:
        await dispatcher.stop()
    return 0


def _actor() -> str:
    try:
        return f"admin:{getpass.getuser()}"
    except (KeyError, OSError):
        return "admin"


async def _admin(settings: Settings, store: SqlEventStore, args: argparse.Namespace) -> int:
    out = Console(soft_wrap=True)
    as_json = args.output == "json"
    if args.action == "add":
        webhook_id = args.webhook_id or new_id()[-12:]
        if not is_valid_job_id(webhook_id):  # the same rule: it becomes a NATS subject token
            raise SwiftTrainerError(
                f"invalid webhook id {webhook_id!r}: letters, digits, '_' and '-'",
                code="invalid_webhook",
            )
        if await store.stream_version(w.webhook_stream(webhook_id)):
            raise w.WebhookError(f"webhook {webhook_id!r} exists; pick another --id")
        recorded = await register_webhook(
            store,
            webhook_id,
            args.url,
            tuple(args.event),
            actor=_actor(),
            description=args.description,
        )
        answer = {
            "webhook_id": webhook_id,
            "url": args.url,
            "event_types": list(args.event),
            "secret": w.webhook_secret(load_signing_key(settings), webhook_id),
            "starts_after_position": recorded.position - 1,
        }
        _emit(out, as_json, answer, f"webhook {webhook_id} registered", answer)
        return 0
    if args.action == "remove":
        await remove_webhook(store, args.webhook_id, actor=_actor(), reason=args.reason)
        answer = {"webhook_id": args.webhook_id, "removed": True}
        _emit(out, as_json, answer, f"webhook {args.webhook_id} removed", answer)
        return 0
    if args.action == "deliveries":
        rows = []
        for recorded in await store.read_stream(w.webhook_stream(args.webhook_id)):
            event = w.decode_webhook_event(recorded.type, recorded.payload)
            rows.append({"position": recorded.position, **msgspec.to_builtins(event)})
        if not rows:
            raise w.WebhookError(f"no webhook {args.webhook_id!r}", code="webhook_not_found")
        _emit_rows(out, as_json, rows, f"deliveries of {args.webhook_id}")
        return 0
    hooks = []
    for stream_id in await streams_with_prefix(store, w.STREAM_PREFIX):
        events = [
            w.decode_webhook_event(r.type, r.payload) for r in await store.read_stream(stream_id)
        ]
        state = w.fold_webhook(stream_id.removeprefix(w.STREAM_PREFIX), events)
        hooks.append(msgspec.to_builtins(state))
    _emit_rows(out, as_json, hooks, "webhooks")
    return 0


def _emit(out: Console, as_json: bool, data: Any, title: str, rows: dict[str, Any]) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.encode(data).decode() + "\n")
        return
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in rows.items():
        table.add_row(key, str(value))
    out.print(table)


def _emit_rows(out: Console, as_json: bool, rows: list[dict[str, Any]], title: str) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return
    table = Table(title=title, title_justify="left")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    out.print(table)
