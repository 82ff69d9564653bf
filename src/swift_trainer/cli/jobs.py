"""``swift-trainer jobs ...``, ``queue`` and ``gpus``: the job commands over the HTTP API.

Tables for people, ``--output json`` (the API's JSON as is) for scripts, ``-f`` to follow.
Exit codes: 0 success; 1 refused by the server, or ``submit --wait`` ended unsuccessfully;
2 bad usage; 3 server unreachable. docs/cli.md is the reference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import msgspec
import yaml
from rich.console import Console

from ..client.http import EXIT_REFUSED, EXIT_USAGE, ApiClient, ClientError
from ..client.profile import environment, resolve_connection
from . import render

#: Statuses ``submit --wait`` stops at, and which of them count as success.
_FINAL: Final = frozenset({"succeeded", "failed", "stopped", "deleted"})

_JOB_ACTIONS: Final = {
    "start": "start a held job, or resume a stopped or failed one",
    "stop": "stop a job (a running one saves a checkpoint)",
    "pause": "stop a job with a checkpoint, to resume it later",
    "resume": "queue a paused job again from its checkpoint",
    "cancel": "end a job for good (not resumable)",
}


def _common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--output", "-o", choices=("table", "json"), default="table", help="json for scripts"
    )
    parser.add_argument("--url", help="server root URL (default SWIFT_TRAINER_URL or profile)")
    parser.add_argument("--api-key", help="API key (default SWIFT_TRAINER_API_KEY or profile)")
    parser.add_argument("--profile", help="a profile of the profile file")
    return parser


def add_client_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    jobs = sub.add_parser("jobs", help="submit, list, show, follow and control training jobs")
    verbs = jobs.add_subparsers(dest="verb", required=True)

    submit = _common(verbs.add_parser("submit", help="submit a job from flags or a spec file"))
    submit.add_argument("--file", "-f", type=Path, help="a YAML or JSON job spec")
    submit.add_argument("--job-id")
    submit.add_argument("--data-path")
    submit.add_argument("--model-path")
    submit.add_argument("--output-dir")
    submit.add_argument("--priority", type=int)
    submit.add_argument("--gpu-count", type=int, help="GPUs per host")
    submit.add_argument("--nodes", type=int, help="hosts the job spans (gpu-count GPUs on each)")
    submit.add_argument(
        "--host-label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run only on runners carrying this label (repeatable)",
    )
    submit.add_argument("--hold", action="store_true", help="hold until started by hand")
    submit.add_argument(
        "--max-runtime", help="time limit over all attempts: seconds, or 90m, 6h, 2d"
    )
    submit.add_argument(
        "--not-preemptible",
        action="store_true",
        help="never stop this job to make room for one of higher priority",
    )
    submit.add_argument("--train-arg", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument(
        "--after",
        action="append",
        default=[],
        metavar="ID[:succeeded|failed|ended]",
        help="wait for this job to end so (default succeeded) before queueing; repeatable",
    )
    submit.add_argument(
        "--wait",
        action="store_true",
        help="show progress until the job ends; exit 1 unless it succeeded",
    )

    listing = _common(verbs.add_parser("list", help="jobs, newest first"))
    listing.add_argument("--status")
    listing.add_argument("--priority", type=int)
    listing.add_argument("--owner", help="only this owner's jobs (a user key sees its own only)")
    listing.add_argument("--label", metavar="KEY=VALUE", help="only jobs with this label")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--all", action="store_true", help="every page, not only the first")

    _common(verbs.add_parser("show", help="one job's details")).add_argument("job_id")
    for name, text in (("logs", "training output"), ("events", "the job's events")):
        verb = _common(verbs.add_parser(name, help=text))
        verb.add_argument("job_id")
        verb.add_argument("--follow", "-f", action="store_true", help="keep following")
        verb.add_argument("--limit", type=int, default=50 if name == "logs" else 100)
    for name, text in _JOB_ACTIONS.items():
        _common(verbs.add_parser(name, help=text)).add_argument("job_id")
    priority = _common(verbs.add_parser("priority", help="change a waiting job's priority"))
    priority.add_argument("job_id")
    priority.add_argument("priority", type=int)
    export = _common(verbs.add_parser("export", help="merge a job's LoRA adapter"))
    export.add_argument("job_id")
    export.add_argument("--checkpoint")
    export.add_argument("--overwrite", action="store_true")
    _common(verbs.add_parser("delete", help="delete a finished job")).add_argument("job_id")

    _common(sub.add_parser("queue", help="the jobs waiting for GPUs, in order"))
    _common(sub.add_parser("gpus", help="GPUs per runner with memory and load bars"))
    add_runner_arguments(sub)


# --- runners: list, drain, undrain (admin) ---------------------------------------------------


def add_runner_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    runners = sub.add_parser("runners", help="GPU hosts: drains and GPU health (admin)")
    verbs = runners.add_subparsers(dest="verb", required=True)
    _common(verbs.add_parser("list", help="runners, drains and unhealthy GPUs with reasons"))
    drain = _common(verbs.add_parser("drain", help="give a runner no new jobs"))
    drain.add_argument("runner_id")
    drain.add_argument("--reason", required=True, help="why, for the audit trail")
    drain.add_argument(
        "--now", action="store_true", help="also stop its jobs with a checkpoint and requeue them"
    )
    undrain = _common(verbs.add_parser("undrain", help="let a drained runner take jobs again"))
    undrain.add_argument("runner_id")
    undrain.add_argument("--reason", default="undrained")


async def _runners(api: ApiClient, args: argparse.Namespace, out: _Out) -> int:
    if args.verb == "list":
        answer = await api.call("GET", "/runners")
        out.data(answer) if out.json else out.show(render.runners_table(answer))
        return 0
    path = f"/runners/{args.runner_id}/{args.verb}"
    body: dict[str, Any] = {"reason": args.reason}
    if args.verb == "drain":
        body["now"] = args.now
    answer = await api.call("POST", path, body=body)
    if out.json:
        out.data(answer)
    else:
        out.console.print(answer.get("message", answer), highlight=False)
    return 0


class _Out:
    """Where answers go: JSON on stdout for scripts, rich tables for people."""

    def __init__(self, mode: str) -> None:
        self.json = mode == "json"
        self.console = Console(soft_wrap=False)
        self.err = Console(stderr=True)

    def data(self, value: Any) -> None:
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()

    def show(self, renderable: Any) -> None:
        self.console.print(renderable)


def _pairs(values: list[str], flag: str, *, parse: bool) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for pair in values:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ClientError(f"{flag} expects KEY=VALUE, got {pair!r}", exit_code=EXIT_USAGE)
        if parse:
            try:
                result[key] = json.loads(raw)
            except json.JSONDecodeError:
                result[key] = raw
        else:
            result[key] = raw
    return result


def submit_body(args: argparse.Namespace) -> dict[str, Any]:
    """The create request: the spec file, then each flag given on top of it."""
    body: dict[str, Any] = {}
    if args.file is not None:
        try:
            loaded = yaml.safe_load(args.file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ClientError(f"cannot read {args.file}: {exc}", exit_code=EXIT_USAGE) from exc
        if not isinstance(loaded, dict):
            raise ClientError(
                f"{args.file} must hold a mapping of job fields", exit_code=EXIT_USAGE
            )
        body.update(loaded)
    flags = {
        "job_id": args.job_id,
        "data_path": args.data_path,
        "model_path": args.model_path,
        "output_dir": args.output_dir,
        "priority": args.priority,
        "gpu_count": args.gpu_count,
        "max_runtime": _duration(args.max_runtime),
        "nodes": args.nodes,
    }
    body.update({k: v for k, v in flags.items() if v is not None})
    if args.hold:
        body["auto_start"] = False
    if args.not_preemptible:
        body["preemptible"] = False
    if args.train_arg:
        body["train_args"] = {
            **body.get("train_args", {}),
            **_pairs(args.train_arg, "--train-arg", parse=True),
        }
    if args.label:
        body["labels"] = {**body.get("labels", {}), **_pairs(args.label, "--label", parse=False)}
    if getattr(args, "after", None):
        body["after"] = [*body.get("after", []), *(_dependency(x) for x in args.after)]
    if args.host_label:
        body["host_labels"] = {
            **body.get("host_labels", {}),
            **_pairs(args.host_label, "--host-label", parse=False),
        }
    missing = [k for k in ("data_path", "model_path") if not body.get(k)]
    if missing:
        raise ClientError(
            "a job needs "
            + " and ".join(f"--{k.replace('_', '-')}" for k in missing)
            + " (or those fields in --file)",
            exit_code=EXIT_USAGE,
        )
    return body


def _dependency(value: str) -> dict[str, str]:
    """``ID`` or ``ID:on`` from ``--after``, as the create request's ``after`` entry."""
    job, _, on = value.partition(":")
    on = on or "succeeded"
    if not job or on not in ("succeeded", "failed", "ended"):
        raise ClientError(
            f"--after expects ID or ID:succeeded|failed|ended, got {value!r}",
            exit_code=EXIT_USAGE,
        )
    return {"job": job, "on": on}


async def run_client(_settings: object, args: argparse.Namespace) -> int:
    out = _Out(args.output)
    try:
        connection = resolve_connection(
            environment(), url=args.url, api_key=args.api_key, profile=args.profile
        )
        async with ApiClient(connection) as api:
            return await _dispatch(api, args, out)
    except ClientError as exc:
        return _fail(out, exc)
    except msgspec.MsgspecError as exc:  # a profile file problem surfaces here too
        return _fail(out, ClientError(str(exc), exit_code=EXIT_USAGE))


def _fail(out: _Out, exc: ClientError) -> int:
    out.err.print(f"[red]error:[/red] {exc.message}", highlight=False, markup=True)
    if out.json:
        out.data(exc.as_json())
    return exc.exit_code


async def _dispatch(api: ApiClient, args: argparse.Namespace, out: _Out) -> int:
    if args.command == "queue":
        queue = await api.call("GET", "/queue")
        out.data(queue) if out.json else out.show(render.queue_table(queue))
        return 0
    if args.command == "gpus":
        gpus = await api.call("GET", "/gpus")
        out.data(gpus) if out.json else out.show(render.gpus_table(gpus))
        return 0
    if args.command == "runners":
        return await _runners(api, args, out)
    verb: str = args.verb
    if verb == "submit":
        return await _submit(api, args, out)
    if verb == "list":
        return await _list(api, args, out)
    if verb in ("logs", "events"):
        return await _logs_or_events(api, args, out)
    job = args.job_id
    answer: Any
    if verb == "show":
        answer = await api.call("GET", f"/jobs/{job}")
        out.data(answer) if out.json else out.show(render.job_details(answer))
        return 0
    if verb in _JOB_ACTIONS:
        answer = await api.call("POST", f"/jobs/{job}/{verb}")
    elif verb == "priority":
        answer = await api.call("PUT", f"/jobs/{job}/priority", body={"priority": args.priority})
    elif verb == "export":
        body = {"overwrite": args.overwrite}
        if args.checkpoint:
            body["checkpoint"] = args.checkpoint
        answer = await api.call("POST", f"/jobs/{job}/export", body=body)
    else:  # delete
        await api.call("DELETE", f"/jobs/{job}")
        answer = {"job_id": job, "deleted": True, "message": f"job {job} deleted"}
    if out.json:
        out.data(answer)
    else:
        out.console.print(answer.get("message", answer), highlight=False)
    return 0


async def _submit(api: ApiClient, args: argparse.Namespace, out: _Out) -> int:
    created = await api.call("POST", "/jobs", body=submit_body(args))
    job_id = created["job_id"]
    if not args.wait:
        if out.json:
            out.data(created)
        else:
            out.console.print(submitted_message(created), highlight=False)
        return 0
    if not out.json:
        out.err.print(submitted_message(created), highlight=False)
        await _follow_with_bar(api, job_id, out)
    else:
        async for _ in api.follow(f"/jobs/{job_id}/progress/stream"):
            pass
    final = await api.call("GET", f"/jobs/{job_id}")
    status = final.get("status")
    if out.json:
        out.data(final)
    else:
        out.console.print(render.key_values(job_id, _final_fields(final)), highlight=False)
    if status == "succeeded":
        return 0
    reason = final.get("failure_reason") or final.get("stop_reason") or ""
    out.err.print(
        f"[red]error:[/red] job {job_id} ended {status}" + (f": {reason}" if reason else ""),
        highlight=False,
    )
    return EXIT_REFUSED


#: The step in a line of swift's training log (``'global_step/max_steps': '12/200'``).
_STEP_IN_LOG: Final = re.compile(r"global_step/max_steps['\"]?\s*:\s*['\"]?(\d+)/(\d+)")


async def _follow_with_bar(api: ApiClient, job_id: str, out: _Out) -> None:
    """The bar until the job ends: status and loss from its progress, steps from its log.

    Progress reports are spaced out by the runner; the log has a line per logged step, so
    the bar moves with the training.
    """
    with render.TrainingProgress(out.err, job_id) as bar:

        async def steps_from_log() -> None:
            async for line in api.follow(f"/jobs/{job_id}/logs/stream", {"limit": 1}):
                match = _STEP_IN_LOG.search(str(line.get("text", "")))
                if match:
                    bar.step(int(match[1]), int(match[2]))

        log = asyncio.create_task(steps_from_log())
        try:
            async for report in api.follow(f"/jobs/{job_id}/progress/stream"):
                bar.update(report)
        finally:
            log.cancel()
            with contextlib.suppress(asyncio.CancelledError, ClientError):
                await log


def submitted_message(created: Mapping[str, Any]) -> str:
    """What a submit says to a person, with the command to run next."""
    job_id, status = created["job_id"], created.get("status")
    if status == "held":
        return f"job {job_id} is held; start it with: swift-trainer jobs start {job_id}"
    if status == "queued":
        position = created.get("queue_position")
        where = f" at position {position}" if position is not None else ""
        wait = created.get("estimated_wait_time")
        eta = f", estimated wait {wait}" if wait and wait != "unknown" else ""
        return (
            f"job {job_id} is queued{where}{eta}; follow it with: swift-trainer jobs show {job_id}"
        )
    return f"job {job_id} is {status}; follow it with: swift-trainer jobs show {job_id}"


def _duration(text: str | None) -> int | str | None:
    """``--max-runtime``: a number of seconds goes as a number, anything else as text."""
    if text is None:
        return None
    return int(text) if text.isdigit() else text


def _final_fields(job: Mapping[str, Any]) -> dict[str, Any]:
    keep = (
        "status",
        "attempt",
        "preemptions",
        "progress",
        "failure_reason",
        "stop_reason",
        "exit_code",
    )
    return {k: job.get(k) for k in keep}


async def _list(api: ApiClient, args: argparse.Namespace, out: _Out) -> int:
    params = {
        "status": args.status,
        "priority": args.priority,
        "owner": args.owner,
        "label": args.label,
        "limit": args.limit,
    }
    items: list[Any] = []
    cursor = None
    while True:
        page = await api.call("GET", "/jobs", params={**params, "cursor": cursor})
        items.extend(page["items"])
        cursor = page.get("next_cursor")
        if not args.all or not cursor:
            break
    if out.json:
        out.data({"items": items, "next_cursor": cursor})
    else:
        out.show(render.jobs_table(items))
    return 0


async def _logs_or_events(api: ApiClient, args: argparse.Namespace, out: _Out) -> int:
    job, logs = args.job_id, args.verb == "logs"
    if args.follow:
        path = f"/jobs/{job}/{args.verb}/stream"
        params = {"limit": args.limit} if logs else None
        async for item in api.follow(path, params):
            if out.json:
                out.data(item)
            elif logs:
                sys.stdout.write(str(item.get("text", "")) + "\n")
                sys.stdout.flush()
            else:
                out.console.print(" ".join(render.event_row(item)), highlight=False)
        return 0
    page = await api.call("GET", f"/jobs/{job}/{args.verb}", params={"limit": args.limit})
    if out.json:
        out.data(page)
    elif logs:
        sys.stdout.write("".join(str(line.get("text", "")) + "\n" for line in page["lines"]))
    else:
        out.show(render.events_table(job, page["events"]))
    return 0
