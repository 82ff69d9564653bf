"""``swift-trainer usage``: GPU-hours per owner, label or day, over the HTTP API.

A table for people, ``-o json`` (the API's report as is) or ``-o csv`` (one line per group)
for spreadsheets. A ``user`` key sees its own jobs only.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from typing import Any, Final

import msgspec
from rich.console import Console
from rich.table import Table

from .http import EXIT_USAGE, ApiClient, ClientError
from .profile import environment, resolve_connection

CSV_COLUMNS: Final = (
    "group",
    "gpu_hours",
    "lost_gpu_hours",
    "attempts",
    "queue_waits",
    "queue_wait_mean_s",
    "queue_wait_p95_s",
)


def add_usage_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    usage = sub.add_parser("usage", help="GPU-hours used and lost, per owner, label or day")
    usage.add_argument(
        "--by", default="owner", help="owner (default), day (UTC) or label:KEY", metavar="GROUP"
    )
    usage.add_argument("--from", dest="start", help="window start, ISO 8601 (default: 7 days ago)")
    usage.add_argument("--to", dest="end", help="window end, ISO 8601 (default: now)")
    usage.add_argument("--output", "-o", choices=("table", "json", "csv"), default="table")
    usage.add_argument("--url", help="server root URL (default SWIFT_TRAINER_URL or profile)")
    usage.add_argument("--api-key", help="API key (default SWIFT_TRAINER_API_KEY or profile)")
    usage.add_argument("--profile", help="a profile of the profile file")


def usage_csv(report: dict[str, Any]) -> str:
    """One line per group; final statuses and lost causes as ``jobs_<status>`` columns."""
    rows = report.get("rows", [])
    statuses = sorted({s for row in rows for s in row.get("jobs", {})})
    causes = sorted({c for row in rows for c in row.get("lost_gpu_hours_by_cause", {})})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [*CSV_COLUMNS, *(f"lost_gpu_hours_{c}" for c in causes), *(f"jobs_{s}" for s in statuses)]
    )
    for row in rows:
        writer.writerow(
            [
                *("" if row.get(c) is None else row[c] for c in CSV_COLUMNS),
                *(row.get("lost_gpu_hours_by_cause", {}).get(c, 0) for c in causes),
                *(row.get("jobs", {}).get(s, 0) for s in statuses),
            ]
        )
    return out.getvalue()


def usage_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"GPU usage by {report['group_by']}, {report['from']} to {report['to']}")
    for name in ("group", "GPU-h", "lost GPU-h", "attempts", "wait mean", "wait p95", "jobs"):
        table.add_column(name, justify="left" if name in ("group", "jobs") else "right")
    for row in report.get("rows", []):
        table.add_row(
            row["group"],
            f"{row['gpu_hours']:.2f}",
            f"{row['lost_gpu_hours']:.2f}",
            str(row["attempts"]),
            _seconds(row.get("queue_wait_mean_s")),
            _seconds(row.get("queue_wait_p95_s")),
            ", ".join(f"{k} {v}" for k, v in row.get("jobs", {}).items()),
        )
    return table


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}s"


async def run_usage(_settings: object, args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    try:
        connection = resolve_connection(
            environment(), url=args.url, api_key=args.api_key, profile=args.profile
        )
        params = {"group_by": args.by, "from": args.start, "to": args.end}
        async with ApiClient(connection) as api:
            report = await api.call("GET", "/usage", params=params)
    except ClientError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False, markup=True)
        if args.output == "json":
            sys.stdout.write(json.dumps(exc.as_json()) + "\n")
        return exc.exit_code
    except msgspec.MsgspecError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, markup=True)
        return EXIT_USAGE
    if args.output == "json":
        sys.stdout.write(json.dumps(report) + "\n")
    elif args.output == "csv":
        sys.stdout.write(usage_csv(report))
    else:
        Console(soft_wrap=False).print(usage_table(report))
    return 0
