"""``swift-trainer files``: list stored datasets with their owners, and give them to an owner.

An operator's command over NATS, like ``upload`` and ``keys``: whoever reaches NATS is the
operator. Files uploaded without keys belong to ``local``; once keys are required, an
admin gives them to their owners here (see docs/tenancy.md).
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime

import msgspec

from ..core.commands import NAME_PATTERN
from ..core.errors import SwiftTrainerError
from ..core.settings import Settings


def add_files_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    files = sub.add_parser("files", help="stored datasets and their owners (operator)")
    files.add_argument("--nats-url", help="NATS server (default NATS_URL or the running 'up')")
    actions = files.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every stored file with its owner")
    listing.add_argument("--owner", help="only this owner's files")
    listing.add_argument("-o", "--output", choices=("table", "json"), default="table")
    chown = actions.add_parser("chown", help="give files to an owner")
    chown.add_argument("file_ids", nargs="*", metavar="FILE_ID")
    chown.add_argument("--to", required=True, dest="new_owner", help="the owner to give them to")
    chown.add_argument(
        "--from", dest="old_owner", help="every file of this owner (e.g. local) instead of ids"
    )


async def run_files(settings: Settings, args: argparse.Namespace) -> int:
    from ..bus.connection import connect, resolve_nats_url
    from ..bus.file_store import FileStore

    nc = await connect(
        resolve_nats_url(settings, args.nats_url), settings, name="swift-trainer-cli"
    )
    try:
        store = FileStore(nc.jetstream())
        if args.action == "list":
            records = [r for r in await store.list() if args.owner in (None, r.owner)]
            if args.output == "json":
                print(msgspec.json.encode(records).decode())  # noqa: T201
            else:
                for r in records:
                    at = datetime.fromtimestamp(r.created_at, UTC).strftime("%Y-%m-%d %H:%M")
                    print(f"{r.id}  {r.owner:<16} {at}  {r.bytes:>10}  {r.filename}")  # noqa: T201
            return 0
        if not re.match(NAME_PATTERN, args.new_owner):
            raise SwiftTrainerError(f"not an owner name: {args.new_owner!r}", code="invalid_owner")
        if bool(args.file_ids) == bool(args.old_owner):
            raise SwiftTrainerError(
                "name FILE_IDs or --from OWNER (one of the two)", code="invalid_arguments"
            )
        ids = list(args.file_ids) or [r.id for r in await store.list() if r.owner == args.old_owner]
        moved = [await store.set_owner(file_id, args.new_owner) for file_id in ids]
        print(json.dumps({"owner": args.new_owner, "files": [r.id for r in moved]}))  # noqa: T201
        return 0
    finally:
        await nc.close()
