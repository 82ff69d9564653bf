"""``swift-trainer audit``: a job's trail, its state at a moment, verification and export.

These commands read the event store directly (``EVENT_STORE_URL``, or the data directory's
SQLite file): an auditor needs no running service, and nothing they do goes through the
components whose output they are checking. Exit codes: 0 intact, 1 a difference was found,
2 the command could not run (bad arguments, unreachable store).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import msgspec
from rich.console import Console
from rich.table import Table

from ..core.audit_chain import ChainVerifier, ExportLine, export_line, read_export
from ..core.errors import SwiftTrainerError
from ..core.settings import Settings
from ..core.sqlaudit import anchor_before, chain_rows
from ..core.sqlstore import SqlEventStore, open_event_store
from ..projections.audit import AuditReport, job_history, job_state_as_of, verify_store
from ..projections.read_models.interface import ReadModel
from ..projections.read_models.redis import RedisReadModel

_EXIT_DIFFERENCE = 1


class Moment(msgspec.Struct, frozen=True):
    """``--as-of`` / ``--since`` / ``--until``: a global position or a time."""

    position: int | None = None
    at: datetime | None = None


def parse_moment(text: str) -> Moment:
    """Digits are a position; anything else an ISO 8601 time (UTC when it names no zone)."""
    if text.isdigit():
        return Moment(position=int(text))
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a position (digits) nor an ISO 8601 time"
        ) from exc
    return Moment(at=at if at.tzinfo else at.replace(tzinfo=UTC))


def add_audit_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="audit the event store: history, verify, export")
    actions = audit.add_subparsers(dest="action", required=True)

    show = actions.add_parser("show", help="a job's full history, or its state at a moment")
    show.add_argument("job_id")
    show.add_argument(
        "--as-of",
        type=parse_moment,
        metavar="TIME|POSITION",
        help="print the job's state folded up to this global position or time instead",
    )
    show.add_argument("--output", "-o", choices=("table", "json"), default="table")

    verify = actions.add_parser(
        "verify", help="recompute the hash chain, fold every stream, compare read models"
    )
    verify.add_argument("--file", type=Path, help="verify an 'audit export' file instead")
    verify.add_argument("--output", "-o", choices=("text", "json"), default="text")

    export = actions.add_parser("export", help="the chained events as JSONL, for auditors")
    export.add_argument("--since", type=parse_moment, metavar="TIME|POSITION")
    export.add_argument("--until", type=parse_moment, metavar="TIME|POSITION")
    export.add_argument("--out", type=Path, help="write here instead of standard output")


async def run_audit(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "verify" and args.file is not None:
        return _verify_file(args.file, args.output)
    store = await _open_store(settings)
    try:
        if args.action == "show":
            return await _show(store, args)
        if args.action == "verify":
            read_model = _shared_read_model(settings)
            try:
                report = await verify_store(store, read_model)
            finally:
                if read_model is not None:
                    await read_model.close()
            _print_report(report, args.output)
            return 0 if report.ok else _EXIT_DIFFERENCE
        return await _export(store, args)
    finally:
        await store.close()


def _require_sqlite_file(url: str) -> None:
    """An auditor pointed at the wrong folder gets told so, not a new empty store."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if not Path(path).exists():
            raise SwiftTrainerError(
                f"no event store at {path}; set EVENT_STORE_URL or --data-dir",
                code="store_not_found",
            )


async def _open_store(settings: Settings) -> SqlEventStore:
    url = settings.resolved_event_store_url
    _require_sqlite_file(url)
    store = open_event_store(url)
    try:
        await store.setup()
    except BaseException:
        await store.close()
        raise
    return store


def _shared_read_model(settings: Settings) -> ReadModel | None:
    """Redis read models when configured; the embedded ones live inside ``up`` only."""
    if not settings.redis_url:
        return None
    return RedisReadModel.from_url(settings.redis_url, prefix=settings.redis_prefix)


async def _show(store: SqlEventStore, args: argparse.Namespace) -> int:
    console = Console(soft_wrap=True)
    if args.as_of is not None:
        moment: Moment = args.as_of
        state, position = await job_state_as_of(
            store, args.job_id, position=moment.position, at=moment.at
        )
        if args.output == "json":
            data = {"as_of_position": position, "state": msgspec.to_builtins(state)}
            sys.stdout.write(msgspec.json.encode(data).decode() + "\n")
        else:
            table = Table(title=f"{args.job_id} as of position {position}")
            table.add_column("field")
            table.add_column("value")
            for key, value in msgspec.to_builtins(state).items():
                table.add_row(key, value if isinstance(value, str) else str(value))
            console.print(table)
        return 0
    entries = await job_history(store, args.job_id)
    if not entries:
        raise SwiftTrainerError(f"no events for job {args.job_id!r}", code="job_not_found")
    if args.output == "json":
        sys.stdout.write(msgspec.json.encode(entries).decode() + "\n")
        return 0
    table = Table(title=f"history of {args.job_id}")
    for column in ("pos", "time", "event", "actor"):
        table.add_column(column, no_wrap=True)
    for column in ("command", "trace", "summary"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        table.add_row(
            str(entry.position),
            entry.time.isoformat(timespec="milliseconds"),
            entry.event,
            entry.actor or "",
            (entry.command_id or "")[:12],
            (entry.trace_id or "")[:12],
            entry.summary,
        )
    console.print(table)
    return 0


def _print_report(report: AuditReport, output: str) -> None:
    if output == "json":
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
        return
    lines = [
        f"chain: {report.events} events in {report.streams} streams; head position "
        f"{report.head.position} hash {report.head.hash}",
        *(f"  {p.kind}: {p.message}" for p in report.chain_problems),
        *(f"  stream: {p.message}" for p in report.stream_problems),
        f"read models: {report.read_models}",
        *(f"  differs: {d}" for d in report.read_model_differences),
        f"replay: {report.events_per_second:,.0f} events/s ({report.seconds:.2f} s)",
        "OK" if report.ok else "FAILED",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


def _verify_file(path: Path, output: str) -> int:
    try:
        with path.open("rb") as handle:
            anchor, rows = read_export(handle)
    except (OSError, ValueError) as exc:
        raise SwiftTrainerError(f"cannot read {path}: {exc}", code="invalid_export") from exc
    verifier = ChainVerifier(anchor)
    verifier.check(rows)
    ok = not verifier.problems
    if output == "json":
        data = {
            "ok": ok,
            "events": verifier.checked,
            "head": msgspec.to_builtins(verifier.head),
            "chain_problems": msgspec.to_builtins(verifier.problems),
        }
        sys.stdout.write(msgspec.json.encode(data).decode() + "\n")
    else:
        for problem in verifier.problems:
            sys.stdout.write(f"  {problem.kind}: {problem.message}\n")
        sys.stdout.write(
            f"chain: {verifier.checked} events; head position {verifier.head.position} "
            f"hash {verifier.head.hash}\n{'OK' if ok else 'FAILED'}\n"
        )
    return 0 if ok else _EXIT_DIFFERENCE


@contextmanager
def _output(path: Path | None) -> Iterator[IO[bytes]]:
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.flush()
        return
    with path.open("wb") as handle:
        yield handle


async def _export(store: SqlEventStore, args: argparse.Namespace) -> int:
    since: Moment = args.since or Moment()
    until: Moment = args.until or Moment()
    with _output(args.out) as out:
        first = True
        async for batch in chain_rows(
            store,
            after_position=(since.position - 1) if since.position else 0,
            until_position=until.position,
            since=since.at,
            until=until.at,
        ):
            if first:
                anchor = await anchor_before(store, batch[0].position)
                out.write(export_line(ExportLine(anchor=anchor)) + b"\n")
                first = False
            for row in batch:
                out.write(export_line(ExportLine(event=row)) + b"\n")
    return 0
