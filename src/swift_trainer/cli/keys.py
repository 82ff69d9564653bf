"""``swift-trainer keys`` and ``quota``, and the ``--auth`` options of ``up`` and ``api``.

Keys and quotas are commands over NATS, like ``submit``: whoever can reach NATS is the
operator (on the embedded ``up`` that is the host itself; in compose, the ``operator``
NATS user), so the first admin key is made on the host with ``keys create --role admin``.
The secret is drawn here, shown once on the last line of the output, and only its SHA-256
travels.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from ..core import commands as c
from ..core.access import ROLES, hash_secret, new_key_id, new_secret
from ..core.errors import SwiftTrainerError
from ..core.settings import Settings

# --- the authentication mode of ``up`` and ``api`` ---------------------------------------------


def add_auth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--auth",
        choices=("required", "off"),
        help="API keys on every route but liveness (default API_AUTH or off)",
    )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve beyond 127.0.0.1 with --auth off anyway (warns at start and hourly)",
    )


def auth_env(args: argparse.Namespace, env: dict[str, str]) -> None:
    """Fold ``--auth`` and ``--insecure-no-auth`` into the settings' environment."""
    if getattr(args, "auth", None):
        env["API_AUTH"] = args.auth
    if getattr(args, "insecure_no_auth", False):
        env["API_INSECURE_NO_AUTH"] = "true"


# --- keys and quotas --------------------------------------------------------------------------


def add_keys_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="API keys: create, list, revoke (operator, over NATS)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="issue a key; the secret is the last line")
    create.add_argument("--owner", required=True, help="who the key's jobs belong to")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--id", dest="key_id", help="default: generated (key-<12 hex>)")
    listing = actions.add_parser("list", help="ids, owners, roles and last use (no secrets)")
    listing.add_argument("--output", "-o", choices=("table", "json"), default="table")
    revoke = actions.add_parser("revoke", help="revoke a key (effective within a second)")
    revoke.add_argument("key_id")
    revoke.add_argument("--reason", default="")

    quota = sub.add_parser("quota", help="per-owner limits (operator, over NATS)")
    quota_actions = quota.add_subparsers(dest="action", required=True)
    set_quota = quota_actions.add_parser("set", help="set an owner's limits (omitted: none)")
    set_quota.add_argument("owner")
    set_quota.add_argument("--max-gpus", type=int, help="GPUs in use at once")
    set_quota.add_argument("--max-queued-jobs", type=int, help="held and queued jobs")
    show = quota_actions.add_parser("list", help="every owner's limits")
    show.add_argument("--output", "-o", choices=("table", "json"), default="table")
    for parser in (create, listing, revoke, set_quota, show):
        parser.add_argument("--nats-url", help="NATS server (default NATS_URL or the running 'up')")


async def _send(settings: Settings, nats_url: str | None, command: c.AnyCommand) -> None:
    from ..bus.command_client import CommandClient
    from ..bus.connection import connect, resolve_nats_url

    nc = await connect(resolve_nats_url(settings, nats_url), settings, name="swift-trainer-cli")
    try:
        client = CommandClient(nc, timeout=settings.command_timeout_s, actor="cli")
        reply = await client.send(command)
    finally:
        await nc.close()
    if reply.error is not None:
        raise SwiftTrainerError(reply.error.message, code=reply.error.code)


def _command(args: argparse.Namespace, secret: str | None) -> c.AnyCommand:
    try:
        match (args.command, args.action):
            case ("keys", "create"):
                assert secret is not None
                return c.IssueKey(
                    key_id=args.key_id or new_key_id(),
                    owner=args.owner,
                    role=args.role,
                    secret_sha256=hash_secret(secret),
                )
            case ("keys", "revoke"):
                return c.RevokeKey(key_id=args.key_id, reason=args.reason)
            case ("quota", "set"):
                return c.SetQuota(
                    owner=args.owner,
                    max_gpus=args.max_gpus,
                    max_queued_jobs=args.max_queued_jobs,
                )
    except msgspec.ValidationError as exc:
        raise SwiftTrainerError(str(exc), code="invalid_command") from exc
    raise SwiftTrainerError(f"unknown action {args.action!r}")  # pragma: no cover


async def _listing(settings: Settings, args: argparse.Namespace) -> int:
    from ..bus.connection import connect, resolve_nats_url
    from ..projections.access_view import fetch_access, gather_key_usage

    nc = await connect(
        resolve_nats_url(settings, args.nats_url), settings, name="swift-trainer-cli"
    )
    try:
        state = await fetch_access(nc, timeout=settings.command_timeout_s)
        usage = await gather_key_usage(nc) if args.command == "keys" else {}
    finally:
        await nc.close()
    rows: list[dict[str, Any]]
    if args.command == "keys":
        rows = [
            {
                "id": key.key_id,
                "owner": key.owner,
                "role": key.role,
                "active": key.active,
                "issued_at": key.issued_at.isoformat(),
                "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
                "last_used": usage[key.key_id].isoformat() if key.key_id in usage else None,
            }
            for key in state.keys.values()
        ]
    else:
        rows = [
            {"owner": owner, "max_gpus": q.max_gpus, "max_queued_jobs": q.max_queued_jobs}
            for owner, q in sorted(state.quotas.items())
        ]
    if args.output == "json":
        print(json.dumps(rows))  # noqa: T201
        return 0
    table = Table(*(rows[0].keys() if rows else ["(none)"]))
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row.values()))
    Console().print(table)
    return 0


async def run_keys(settings: Settings, args: argparse.Namespace) -> int:
    """``keys create|list|revoke`` and ``quota set|list``."""
    if args.action == "list":
        return await _listing(settings, args)
    secret = new_secret() if args.command == "keys" and args.action == "create" else None
    command = _command(args, secret)
    await _send(settings, args.nats_url, command)
    match command:
        case c.IssueKey(key_id=key_id, owner=owner, role=role):
            print(f"key {key_id} issued to {owner} as {role}; the secret is shown once:")  # noqa: T201
            print(secret, flush=True)  # noqa: T201
        case c.RevokeKey(key_id=key_id):
            print(f"key {key_id} revoked")  # noqa: T201
        case c.SetQuota(owner=owner, max_gpus=gpus, max_queued_jobs=queued):
            print(f"quota of {owner}: max_gpus={gpus} max_queued_jobs={queued}")  # noqa: T201
    sys.stdout.flush()
    return 0
