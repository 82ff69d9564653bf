"""The ``swift-trainer`` command: one parser, commands grouped for the help, then dispatch."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

from .. import service
from ..core import commands as c
from ..core.errors import SwiftTrainerError
from ..core.ids import new_job_id
from ..core.logs import configure_logging
from ..core.settings import Settings, load_settings
from ..core.spec import decode_spec
from .keys import (
    add_auth_arguments,
    add_keys_arguments,
    auth_env,
    run_keys,
)

_log = logging.getLogger("swift_trainer")

#: Commands of the terminal client over HTTP: their output is for people or scripts.
CLIENT_COMMANDS: Final = frozenset({"jobs", "queue", "gpus"})


def _configure_logging(settings: Settings, command: str) -> None:
    log_file = Path(settings.log_dir) / f"swift-trainer-{command}.log" if settings.log_dir else None
    configure_logging(settings.log_level, settings.log_format, log_file)


# --- the service's processes: parse, then let the composition root build them -------------


async def _run_up(settings: Settings, args: argparse.Namespace) -> int:
    from .runner import options_from_args

    return await service.run_up(
        settings, options_from_args(settings, args), nats_port=args.nats_port
    )


async def _run_handler(settings: Settings, _args: argparse.Namespace) -> int:
    return await service.run_handler(settings)


async def _run_scheduler(settings: Settings, args: argparse.Namespace) -> int:
    from .scheduler import scheduler_options

    return await service.run_scheduler(settings, scheduler_options(args), nats_url=args.nats_url)


async def _run_runner(settings: Settings, args: argparse.Namespace) -> int:
    from .runner import options_from_args

    return await service.run_runner(
        settings, options_from_args(settings, args), nats_url=args.nats_url
    )


async def _run_api(settings: Settings, args: argparse.Namespace) -> int:
    return await service.run_api(settings, projector=not args.no_projector)


async def _run_projections(settings: Settings, args: argparse.Namespace) -> int:
    return await service.run_rebuild(settings, drop_feeds=args.drop_feeds)


# --- commands over NATS ---------------------------------------------------------------------


def _parse_train_args(pairs: Sequence[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SwiftTrainerError(
                f"--train-arg expects KEY=VALUE, got {pair!r}", code="invalid_spec"
            )
        try:
            result[key] = json.loads(raw)
        except json.JSONDecodeError:
            result[key] = raw
    return result


def _build_command(args: argparse.Namespace) -> c.AnyCommand:
    match args.op:
        case "submit":
            job_id = args.job_id or new_job_id()
            fields: dict[str, Any] = {
                "data_path": args.data_path,
                "training_file": args.training_file,
                "validation_file": args.validation_file,
                "method": args.method,
                "auto_export": args.auto_export,
                "model_path": args.model_path,
                "output_dir": args.output_dir or f"output/{job_id}",
                "priority": args.priority,
                "gpu_count": args.gpu_count,
                "auto_start": not args.hold,
                "train_args": _parse_train_args(args.train_arg),
            }
            spec = decode_spec({k: v for k, v in fields.items() if v is not None})
            return c.SubmitJob(job_id=job_id, spec=spec)
        case "pause":
            return c.PauseJob(job_id=args.job_id)
        case "resume":
            return c.ResumeJob(job_id=args.job_id)
        case "cancel":
            return c.CancelJob(job_id=args.job_id, reason=args.reason)
        case "start":
            return c.StartJob(job_id=args.job_id)
        case "stop":
            return c.StopJob(job_id=args.job_id, reason=args.reason)
        case "delete":
            return c.DeleteJob(job_id=args.job_id)
        case "export":
            return c.RequestExport(job_id=args.job_id, checkpoint=args.checkpoint)
        case "priority":
            return c.ChangePriority(job_id=args.job_id, priority=args.priority)
    raise SwiftTrainerError(f"unknown command {args.op!r}")


async def _run_upload(settings: Settings, args: argparse.Namespace) -> int:
    """``swift-trainer upload FILE``: check and store a dataset, print its file object."""
    from ..bus.connection import connect, resolve_nats_url
    from ..bus.file_store import FileStore, upload_path

    path = Path(args.path)
    if not await asyncio.to_thread(path.is_file):
        raise SwiftTrainerError(f"no file {path}", code="file_not_found")
    nc = await connect(
        resolve_nats_url(settings, args.nats_url), settings, name="swift-trainer-cli"
    )
    try:
        record = await upload_path(FileStore(nc.jetstream()), path)
    finally:
        await nc.close()
    print(msgspec.json.encode(record).decode())  # noqa: T201
    return 0 if record.status == "processed" else 1


async def _run_send(settings: Settings, args: argparse.Namespace) -> int:
    from ..bus.command_client import CommandClient
    from ..bus.connection import connect, resolve_nats_url

    try:
        command = _build_command(args)
    except msgspec.ValidationError as exc:
        raise SwiftTrainerError(str(exc), code="invalid_command") from exc
    nc = await connect(
        resolve_nats_url(settings, args.nats_url), settings, name="swift-trainer-cli"
    )
    try:
        reply = await CommandClient(nc, timeout=settings.command_timeout_s, actor="cli").send(
            command
        )
    finally:
        await nc.close()
    print(msgspec.json.encode(reply).decode())  # noqa: T201
    return 0 if reply.ok else 1


def _add_front_doors(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Audit, the published contract, the job commands over HTTP, webhooks and keys."""
    from .audit import add_audit_arguments
    from .contract import add_contract_arguments
    from .jobs import add_client_arguments
    from .sweeps import add_sweeps_arguments
    from .webhooks import add_webhooks_arguments

    add_audit_arguments(sub)
    add_contract_arguments(sub)
    add_client_arguments(sub)
    add_sweeps_arguments(sub)
    add_webhooks_arguments(sub)
    add_keys_arguments(sub)
    from .files import add_files_arguments
    from .usage import add_usage_arguments

    add_files_arguments(sub)
    add_usage_arguments(sub)


def _add_operator_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``swift-trainer operator ...``: job commands sent straight over NATS, on the host."""
    operator = sub.add_parser(
        "operator",
        help="job commands straight over NATS, on the service's host (JSON answers)",
        description="Job commands sent over NATS, where the service runs; they print the "
        "command handler's answer as JSON. From anywhere else, use 'swift-trainer jobs'.",
    )
    ops = operator.add_subparsers(dest="op", required=True, metavar="ACTION")

    def with_nats(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--nats-url", help="NATS server (default NATS_URL or the running 'up')")
        return p

    _add_submit_arguments(with_nats(ops.add_parser("submit", help="submit a training job")))
    upload = with_nats(ops.add_parser("upload", help="check and store a JSONL dataset"))
    upload.add_argument("path", help="a JSONL file (messages, or query/response records)")
    for name, text in (
        ("start", "start or resume a job"),
        ("delete", "delete a job"),
        ("pause", "stop a job with a checkpoint, to resume it later"),
        ("resume", "queue a paused job again from its checkpoint"),
    ):
        with_nats(ops.add_parser(name, help=text)).add_argument("job_id")
    cancel = with_nats(ops.add_parser("cancel", help="end a job for good (not resumable)"))
    cancel.add_argument("job_id")
    cancel.add_argument("--reason", default="cancelled by user")
    stop = with_nats(ops.add_parser("stop", help="stop a job"))
    stop.add_argument("job_id")
    stop.add_argument("--reason", default="stopped by user")
    export = with_nats(ops.add_parser("export", help="merge a job's LoRA adapter"))
    export.add_argument("job_id")
    export.add_argument("--checkpoint")
    priority = with_nats(ops.add_parser("priority", help="change a queued job's priority"))
    priority.add_argument("job_id")
    priority.add_argument("priority", type=int)


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """Global options moved to the front; a legacy job command put under ``operator``.

    A legacy command also gets a deprecation notice on stderr.
    """
    front: list[str] = []
    rest: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        name = item.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            if "=" in item or i + 1 == len(items):
                front.append(item)
                i += 1
            else:
                front.extend(items[i : i + 2])
                i += 2
            continue
        rest.append(item)
        i += 1
    if rest and rest[0] in LEGACY_OPERATOR_COMMANDS:
        print(  # noqa: T201
            f"warning: 'swift-trainer {rest[0]}' is deprecated and will be removed; use "
            f"'swift-trainer jobs {rest[0]}' (HTTP API) or 'swift-trainer operator {rest[0]}' "
            "(NATS, on the service's host)",
            file=sys.stderr,
        )
        rest.insert(0, "operator")
    return front + rest


def _add_submit_arguments(submit: argparse.ArgumentParser) -> None:
    submit.add_argument("--job-id")
    dataset = submit.add_mutually_exclusive_group(required=True)
    dataset.add_argument("--data-path", help="hub dataset ids or paths on the runner")
    dataset.add_argument("--training-file", help="an uploaded file's id (POST /v1/files)")
    submit.add_argument("--validation-file", help="an uploaded file's id, for --val_dataset")
    submit.add_argument("--method", choices=["supervised", "dpo"], default="supervised")
    submit.add_argument(
        "--auto-export", action="store_true", help="merge the LoRA adapter after success"
    )
    submit.add_argument("--model-path", required=True)
    submit.add_argument("--output-dir")
    submit.add_argument("--priority", type=int, default=5)
    submit.add_argument("--gpu-count", type=int, default=1)
    submit.add_argument("--hold", action="store_true", help="do not queue until started")
    submit.add_argument("--train-arg", action="append", default=[], metavar="KEY=VALUE")


#: The top-level help's groups, in order; every command is in exactly one.
COMMAND_GROUPS: Final = {
    "service processes": ("up", "handler", "api", "scheduler", "runner"),
    "jobs (over the HTTP API, from anywhere)": ("jobs", "sweeps", "queue", "gpus", "usage"),
    "administration": (
        "keys",
        "quota",
        "files",
        "runners",
        "webhooks",
        "audit",
        "projections",
        "contract",
        "operator",
    ),
}
#: Job commands that once sat at the top level; they still work, under ``operator``.
LEGACY_OPERATOR_COMMANDS: Final = frozenset(
    {"submit", "upload", "start", "delete", "pause", "resume", "cancel", "stop", "export"}
    | {"priority"}
)
#: Options every command accepts, before or after the command's name.
GLOBAL_OPTIONS: Final = ("--env-file", "--data-dir")


def _grouped_help(helps: dict[str, str]) -> str:
    lines = []
    for title, names in COMMAND_GROUPS.items():
        lines.append(f"{title}:")
        lines.extend(f"  {name:<14}{helps.get(name, '')}" for name in names)
        lines.append("")
    lines.append("Run 'swift-trainer COMMAND --help' for a command's options.")
    lines.append("--env-file and --data-dir may also come after the command.")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swift-trainer",
        usage="swift-trainer [--env-file FILE] [--data-dir DIR] COMMAND ...",
        description="Run ms-swift fine-tuning jobs on your own GPU hosts.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--env-file", help="read settings from this env file")
    parser.add_argument("--data-dir", help="where events, JetStream and state live")
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help=argparse.SUPPRESS,
        prog="swift-trainer",
    )

    up = sub.add_parser("up", help="run the whole service in one process (embedded mode)")
    up.add_argument("--host", help="HTTP bind address (default APP_HOST or 127.0.0.1)")
    up.add_argument("--port", type=int, help="HTTP port (default APP_PORT or 8000)")
    up.add_argument("--nats-port", type=int, default=None, help="embedded nats-server port")
    up.add_argument(
        "--preemption",
        choices=("on", "off"),
        help="let urgent jobs preempt lower-priority ones (default SCHEDULER_PREEMPTION or on)",
    )

    sub.add_parser("handler", help="run the command handler and outbox relay (distributed)")
    api = sub.add_parser("api", help="run the HTTP API (distributed; Redis read models)")
    api.add_argument("--host", help="HTTP bind address (default APP_HOST or 127.0.0.1)")
    api.add_argument("--port", type=int, help="HTTP port (default APP_PORT or 8000)")
    api.add_argument(
        "--no-projector",
        action="store_true",
        help="only serve; another process keeps the shared read models up to date",
    )

    from .runner import add_runner_arguments
    from .scheduler import add_scheduler_arguments

    add_runner_arguments(up)
    scheduler = sub.add_parser("scheduler", help="run a scheduler (distributed)")
    add_scheduler_arguments(scheduler)
    runner = sub.add_parser("runner", help="run the agent of one GPU host")
    add_runner_arguments(runner)
    add_auth_arguments(up)
    add_auth_arguments(api)
    for component in (up, sub.choices["handler"], api, scheduler, runner):
        component.add_argument(
            "--metrics-port",
            type=int,
            help="also serve Prometheus /metrics on this port (the API port has /metrics too)",
        )

    projections = sub.add_parser("projections", help="read-model maintenance")
    projections_sub = projections.add_subparsers(dest="action", required=True)
    rebuild = projections_sub.add_parser(
        "rebuild",
        help="wipe the Redis read models and replay the event store into them",
    )
    rebuild.add_argument(
        "--drop-feeds",
        action="store_true",
        help="also drop logs, runner heartbeats and the queue view (they are not in the store)",
    )

    _add_front_doors(sub)

    _add_operator_commands(sub)
    groups = {action.dest: action.help or "" for action in sub._choices_actions}
    sub._choices_actions.clear()  # the grouped list below replaces argparse's flat one
    parser.epilog = _grouped_help(groups)
    return parser


def _loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop unless ``EVENT_LOOP=asyncio``: its C loop spends less CPU on every socket."""
    if settings.event_loop == "asyncio":
        return None
    import uvloop

    return uvloop.new_event_loop


async def _awaited(work: Awaitable[int]) -> int:
    return await work


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(normalize_argv(sys.argv[1:] if argv is None else argv))
    env = dict(os.environ)
    if args.data_dir:
        env["SWIFT_TRAINER_DATA_DIR"] = args.data_dir
    if getattr(args, "host", None):
        env["APP_HOST"] = args.host
    if getattr(args, "port", None) is not None:
        env["APP_PORT"] = str(args.port)
    auth_env(args, env)
    if args.command == "up" and getattr(args, "nats_url", None):
        env["NATS_URL"] = args.nats_url
    if getattr(args, "preemption", None):
        env["SCHEDULER_PREEMPTION"] = args.preemption
    try:
        settings = load_settings(env, env_file=args.env_file)
        _configure_logging(settings, args.command)
        if args.command in CLIENT_COMMANDS:
            for library in ("httpx", "httpcore"):  # their INFO lines are not for this output
                logging.getLogger(library).setLevel(logging.WARNING)
        if getattr(args, "metrics_port", None) is not None:
            service.serve_metrics(settings, args.metrics_port)
        from .audit import run_audit
        from .contract import run_contract
        from .files import run_files
        from .jobs import run_client
        from .sweeps import run_sweeps
        from .usage import run_usage
        from .webhooks import run_webhooks

        runners: dict[str, Callable[[Settings, argparse.Namespace], Awaitable[int]]] = {
            "up": _run_up,
            "handler": _run_handler,
            "scheduler": _run_scheduler,
            "runner": _run_runner,
            "projections": _run_projections,
            "api": _run_api,
            "audit": run_audit,
            "contract": run_contract,
            "jobs": run_client,
            "queue": run_client,
            "gpus": run_client,
            "sweeps": run_sweeps,
            "runners": run_client,
            "webhooks": run_webhooks,
            "keys": run_keys,
            "quota": run_keys,
            "files": run_files,
            "usage": run_usage,
            "operator": _run_upload if getattr(args, "op", None) == "upload" else _run_send,
        }
        with asyncio.Runner(loop_factory=_loop_factory(settings)) as runner:
            return runner.run(_awaited(runners[args.command](settings, args)))
    except SwiftTrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    except KeyboardInterrupt:
        return 130
