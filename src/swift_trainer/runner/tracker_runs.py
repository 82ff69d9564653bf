"""The run each experiment tracker files a training under, and the link to it.

The runner knows a run's address before the training starts. For MLflow it creates the run
itself through MLflow's REST API (or finds the one an earlier attempt of the job made) and
hands its id to the training as ``MLFLOW_RUN_ID``, which transformers' ``MLflowCallback``
attaches to. For W&B it sets ``WANDB_RUN_ID`` to the job's id (``WANDB_RESUME=allow``), so
every attempt logs to one run. Links carry no credentials: userinfo is dropped from URLs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Final
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
import msgspec

from .swift_command import SwiftInvocation
from .tracker_check import report_to, unreachable_trackers, without_unreachable

REQUEST_TIMEOUT_S: Final = 10.0
WANDB_APP: Final = "https://wandb.ai"
#: transformers' ``WandbCallback`` files a run without ``WANDB_PROJECT`` under this project.
WANDB_DEFAULT_PROJECT: Final = "huggingface"
_API: Final = "/api/2.0/mlflow"


class TrackerStart(msgspec.Struct, frozen=True):
    """The invocation to start, what was changed to start it, and each tracker's run link."""

    invocation: SwiftInvocation
    warnings: tuple[str, ...] = ()
    urls: dict[str, str] = {}


class MlflowRun(msgspec.Struct, frozen=True):
    experiment_id: str
    run_id: str


class TrackerError(Exception):
    """A tracker refused or failed a request; the message says which and why."""


def public_url(url: str) -> str:
    """``url`` without userinfo, query or trailing slash: fit for an event or a page."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def mlflow_run_url(tracking_uri: str, run: MlflowRun) -> str:
    """The MLflow UI's page of ``run`` (the UI is served at the tracking URI)."""
    return f"{public_url(tracking_uri)}/#/experiments/{run.experiment_id}/runs/{run.run_id}"


def wandb_run_url(env: Mapping[str, str], run_id: str) -> str | None:
    """The W&B page of ``run_id``, or None when the entity (the team) is not known here."""
    entity = env.get("WANDB_ENTITY")
    if not entity:
        return None
    project = env.get("WANDB_PROJECT") or WANDB_DEFAULT_PROJECT
    base = env.get("WANDB_BASE_URL")
    app = WANDB_APP if not base or urlsplit(base).hostname == "api.wandb.ai" else base
    return f"{public_url(app)}/{entity}/{project}/runs/{run_id}"


def _mlflow_auth(tracking_uri: str, env: Mapping[str, str]) -> httpx.Auth | None:
    """MLflow's own credential variables as its client reads them, else the URI's userinfo."""
    user, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return httpx.BasicAuth(user, password)
    parts = urlsplit(tracking_uri)
    if parts.username:
        return httpx.BasicAuth(unquote(parts.username), unquote(parts.password or ""))
    return None


def _mlflow_headers(env: Mapping[str, str]) -> dict[str, str]:
    token = env.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _call(
    client: httpx.AsyncClient, method: str, path: str, **kwargs: object
) -> dict[str, object]:
    try:
        response = await client.request(method, _API + path, **kwargs)  # type: ignore[arg-type]
    except httpx.HTTPError as exc:
        raise TrackerError(f"{path}: {type(exc).__name__}") from None
    if response.status_code == 404 and path == "/experiments/get-by-name":
        return {}
    if response.status_code >= 400:
        raise TrackerError(f"{path} answered {response.status_code}: {response.text[:200]}")
    body = response.json()
    if not isinstance(body, dict):
        raise TrackerError(f"{path} answered {body!r:.200}")
    return body


def _field(body: Mapping[str, object], *path: str) -> str:
    value: object = body
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    if not isinstance(value, str):
        raise TrackerError(f"MLflow's answer has no {'.'.join(path)}")
    return value


async def open_mlflow_run(
    tracking_uri: str,
    *,
    job_id: str,
    run_name: str,
    tags: Mapping[str, str],
    experiment: str | None = None,
    env: Mapping[str, str] | None = None,
) -> MlflowRun:
    """The MLflow run of ``job_id``: the one an earlier attempt made, else a new one.

    ``experiment`` is the experiment's name (created when missing); without it the run goes
    to ``MLFLOW_EXPERIMENT_ID`` or MLflow's default experiment, ``"0"``.
    """
    env = env or {}
    async with httpx.AsyncClient(
        base_url=public_url(tracking_uri),
        auth=_mlflow_auth(tracking_uri, env),
        headers=_mlflow_headers(env),
        timeout=REQUEST_TIMEOUT_S,
    ) as client:
        if experiment:
            found = await _call(
                client, "GET", "/experiments/get-by-name", params={"experiment_name": experiment}
            )
            if found:
                experiment_id = _field(found, "experiment", "experiment_id")
            else:
                made = await _call(client, "POST", "/experiments/create", json={"name": experiment})
                experiment_id = _field(made, "experiment_id")
        else:
            experiment_id = env.get("MLFLOW_EXPERIMENT_ID") or "0"
        quoted = job_id.replace("'", "")
        earlier = await _call(
            client,
            "POST",
            "/runs/search",
            json={
                "experiment_ids": [experiment_id],
                "filter": f"tags.job_id = '{quoted}'",
                "run_view_type": "ACTIVE_ONLY",
                "max_results": 1,
                "order_by": ["attributes.start_time DESC"],
            },
        )
        runs = earlier.get("runs")
        if isinstance(runs, list) and runs and isinstance(runs[0], Mapping):
            return MlflowRun(experiment_id, _field(runs[0], "info", "run_id"))
        made = await _call(
            client,
            "POST",
            "/runs/create",
            json={
                "experiment_id": experiment_id,
                "run_name": run_name,
                "start_time": int(time.time() * 1000),
                "tags": [{"key": k, "value": v} for k, v in {**tags, "job_id": job_id}.items()],
            },
        )
        return MlflowRun(experiment_id, _field(made, "run", "info", "run_id"))


def _run_name(argv: tuple[str, ...], job_id: str) -> str:
    return argv[argv.index("--run_name") + 1] if "--run_name" in argv else job_id


def _tags(env: Mapping[str, str]) -> dict[str, str]:
    try:
        tags = json.loads(env.get("MLFLOW_TAGS", "{}"))
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}


async def prepare_trackers(invocation: SwiftInvocation, job_id: str) -> TrackerStart:
    """Check the trackers of ``invocation``, open their runs, and say where each run is.

    A tracker that cannot be reached is left out or goes offline (``tracker_check``); an
    MLflow server that refuses the run leaves the training to create its own, unlinked.
    """
    invocation, warnings = without_unreachable(invocation, await unreachable_trackers(invocation))
    trackers = report_to(invocation.argv)
    env, urls, notes = dict(invocation.env), {}, list(warnings)
    uri = env.get("MLFLOW_TRACKING_URI", "")
    if "mlflow" in trackers and uri.startswith(("http://", "https://")):
        try:
            run = await open_mlflow_run(
                uri,
                job_id=job_id,
                run_name=_run_name(invocation.argv, job_id),
                tags=_tags(env),
                experiment=env.get("MLFLOW_EXPERIMENT_NAME"),
                env=env,
            )
        except TrackerError as exc:
            notes.append(f"mlflow: the run could not be created ({exc}); it has no link")
        else:
            env["MLFLOW_RUN_ID"] = run.run_id
            urls["mlflow"] = mlflow_run_url(uri, run)
    if "wandb" in trackers:
        run_id = env.setdefault("WANDB_RUN_ID", job_id)
        env.setdefault("WANDB_RESUME", "allow")
        url = wandb_run_url(env, run_id) if env.get("WANDB_MODE") != "offline" else None
        if url is not None:
            urls["wandb"] = url
    changed = msgspec.structs.replace(invocation, env=env)
    return TrackerStart(invocation=changed, warnings=tuple(notes), urls=urls)
