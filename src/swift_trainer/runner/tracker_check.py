"""Experiment trackers the run cannot reach: checked before a start, so training still runs.

A tracker that cannot be reached would end the training at its first report (MLflow's
client raises; W&B waits, then fails). The runner checks each remote tracker with a TCP
connect before the start and, when it fails, keeps the run going without it: MLflow is
left out of ``--report_to``, W&B logs offline into the output folder (``WANDB_MODE=
offline``, to ``wandb sync`` later). Each change is a warning on the job.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

import msgspec

from .swift_command import SwiftInvocation

CONNECT_TIMEOUT_S: Final = 2.0
WANDB_DEFAULT: Final = "https://api.wandb.ai"


def remote_endpoints(report_to: tuple[str, ...], env: Mapping[str, str]) -> dict[str, str]:
    """Tracker -> URL of the server it reports to; trackers that write files are absent."""
    found: dict[str, str] = {}
    mlflow = env.get("MLFLOW_TRACKING_URI", "")
    if "mlflow" in report_to and mlflow.startswith(("http://", "https://")):
        found["mlflow"] = mlflow
    wandb_offline = env.get("WANDB_MODE", "") in ("offline", "disabled", "dryrun")
    if "wandb" in report_to and not wandb_offline:
        found["wandb"] = env.get("WANDB_BASE_URL") or WANDB_DEFAULT
    return found


async def reachable(url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when a TCP connection to the URL's host opens in time, else why not."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not parts.hostname:
        return f"{url} names no host"
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(parts.hostname, port)
    except (OSError, TimeoutError) as exc:
        return f"{parts.hostname}:{port} cannot be reached ({type(exc).__name__})"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


def report_to(argv: tuple[str, ...]) -> tuple[str, ...]:
    """The trackers an argv's ``--report_to`` names (none without the flag)."""
    if "--report_to" not in argv:
        return ()
    trackers: list[str] = []
    for item in argv[argv.index("--report_to") + 1 :]:
        if item.startswith("--"):
            break
        trackers.append(item)
    return tuple(trackers)


async def unreachable_trackers(invocation: SwiftInvocation) -> dict[str, str]:
    """Tracker -> why its server cannot be reached, for the trackers of ``invocation``."""
    endpoints = remote_endpoints(report_to(invocation.argv), invocation.env)
    answers = await asyncio.gather(*(reachable(url) for url in endpoints.values()))
    return {t: why for t, why in zip(endpoints, answers, strict=True) if why is not None}


def without_unreachable(
    invocation: SwiftInvocation, problems: Mapping[str, str]
) -> tuple[SwiftInvocation, tuple[str, ...]]:
    """The invocation with each unreachable tracker left out or offline, and the warnings."""
    if not problems:
        return invocation, ()
    argv, env, warnings = list(invocation.argv), dict(invocation.env), []
    if "mlflow" in problems:
        start = argv.index("--report_to") + 1
        end = start
        while end < len(argv) and not argv[end].startswith("--"):
            end += 1
        kept = [t for t in argv[start:end] if t != "mlflow"] or ["none"]
        argv[start:end] = kept
        warnings.append(f"mlflow: {problems['mlflow']}; the run trains without MLflow")
    if "wandb" in problems:
        env["WANDB_MODE"] = "offline"
        warnings.append(
            f"wandb: {problems['wandb']}; the run logs offline in its output folder "
            "(upload it later with wandb sync)"
        )
    changed = msgspec.structs.replace(invocation, argv=tuple(argv), env=env)
    return changed, tuple(warnings)
