"""``swift-trainer sweeps ...``: create, list, show, stop and cancel sweeps over HTTP.

The same habits as ``jobs``: tables for people, ``--output json`` for scripts, exit 0 on
success, 1 when the server refused, 2 on bad usage, 3 when the server is unreachable.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import msgspec
import yaml
from rich.table import Table

from ..client.http import EXIT_USAGE, ApiClient, ClientError
from ..client.profile import environment, resolve_connection
from .jobs import _common, _fail, _Out


def add_sweeps_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sweeps = sub.add_parser("sweeps", help="hyperparameter sweeps over the HTTP API")
    verbs = sweeps.add_subparsers(dest="verb", required=True)
    create = _common(verbs.add_parser("create", help="create a sweep from a sweep file"))
    create.add_argument("--file", "-f", type=Path, required=True, help="a YAML or JSON sweep")
    _common(verbs.add_parser("list", help="sweeps, newest first"))
    for name, text in (
        ("show", "one sweep: trials, counts, percent done and the best trial"),
        ("stop", "stop every trial of a sweep (with a checkpoint)"),
        ("cancel", "cancel every trial of a sweep"),
    ):
        _common(verbs.add_parser(name, help=text)).add_argument("sweep_id")


def _sweep_file(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ClientError(f"cannot read {path}: {exc}", exit_code=EXIT_USAGE) from exc
    if not isinstance(loaded, dict):
        raise ClientError(f"{path} must hold a mapping of sweep fields", exit_code=EXIT_USAGE)
    return loaded


def sweeps_table(sweeps: list[dict[str, Any]]) -> Table:
    table = Table("SWEEP", "NAME", "STATUS", "DONE", "TRIALS", "BEST", "METRIC")
    for s in sweeps:
        best = s.get("best") or {}
        table.add_row(
            s["sweep_id"],
            s["name"],
            s["status"],
            f"{s['percent_done']:.0f}%",
            str(s["trials_total"]),
            best.get("job_id", "-"),
            "-" if best.get("metric") is None else f"{best['metric']:.4g}",
        )
    return table


def trials_table(sweep: dict[str, Any]) -> Table:
    names = sorted({k for t in sweep.get("trials") or [] for k in t["params"]})
    table = Table("#", "JOB", "STATUS", "METRIC", *names, title=_title(sweep))
    best = (sweep.get("best") or {}).get("index")
    for t in sweep.get("trials") or []:
        metric = "-" if t.get("metric") is None else f"{t['metric']:.4g}"
        marker = " *" if t["index"] == best else ""
        table.add_row(
            str(t["index"]) + marker,
            t["job_id"],
            t.get("outcome") or t["status"],
            metric,
            *(str(t["params"].get(n, "")) for n in names),
        )
    return table


def _title(sweep: dict[str, Any]) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sweep["counts"].items())
    return (
        f"{sweep['sweep_id']} ({sweep['name']}): {sweep['status']}, "
        f"{sweep['percent_done']:.0f}% done; {counts}; {sweep['goal']} {sweep['metric']}"
    )


async def run_sweeps(_settings: object, args: argparse.Namespace) -> int:
    out = _Out(args.output)
    try:
        connection = resolve_connection(
            environment(), url=args.url, api_key=args.api_key, profile=args.profile
        )
        async with ApiClient(connection) as api:
            return await _dispatch(api, args, out)
    except ClientError as exc:
        return _fail(out, exc)
    except msgspec.MsgspecError as exc:
        return _fail(out, ClientError(str(exc), exit_code=EXIT_USAGE))


async def _dispatch(api: ApiClient, args: argparse.Namespace, out: _Out) -> int:
    answer: Any
    if args.verb == "create":
        answer = await api.call("POST", "/sweeps", body=_sweep_file(args.file))
        out.data(answer) if out.json else out.show(trials_table(answer))
    elif args.verb == "list":
        answer = await api.call("GET", "/sweeps")
        out.data(answer) if out.json else out.show(sweeps_table(answer["sweeps"]))
    elif args.verb == "show":
        answer = await api.call("GET", f"/sweeps/{args.sweep_id}")
        out.data(answer) if out.json else out.show(trials_table(answer))
    else:
        answer = await api.call("POST", f"/sweeps/{args.sweep_id}/{args.verb}")
        if out.json:
            out.data(answer)
        else:
            out.console.print(answer["message"], highlight=False)
    return 0
