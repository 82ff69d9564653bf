"""Every route, every role, every owner: the route table that a new route cannot skip.

The real stack (nats-server, handler, store, feeds, object store) behind a real HTTP server,
so follow streams answer like they do for a client. Keys: an admin, a viewer, the user
``alice`` and the user ``bobx9``; no key. Each row of ``ROUTES`` is called by each role on
alice's resource (``own``, the user's own), bob's (``other``) and an unknown id (``none``).
Checked: the status, that another owner's resource answers exactly like an unknown one, and
that no body shown to a user or to no key names bob's jobs, files or content. A route of the
app, of its OpenAPI document or of the dashboard's calls that has no row fails the walk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from litestar import Litestar, get

from swift_trainer.api.app import create_app
from swift_trainer.api.auth.principal import Principal
from swift_trainer.api.dashboard.routes import ASSETS
from swift_trainer.projections.access_view import AccessFollower, AccessView
from swift_trainer.projections.experiments.experiments_service import ExperimentsService
from swift_trainer.projections.read_models import MemoryReadModel

from .conftest import PREFIX, Stack, running_stack
from .test_auth import issue
from .test_streams import serving
from .test_system import heartbeat

Who = Literal["admin", "user", "viewer", "none"]
Target = Literal["own", "other", "none"]
WHO: tuple[Who, ...] = ("admin", "user", "viewer", "none")
TARGETS: tuple[Target, ...] = ("own", "other", "none")
#: The other owner: its name is in every id of its jobs, so a leak is a substring.
BOB = "bobx9"
BOB_LINE = "BOB-PRIVATE-LINE"
#: What an allowed write may answer: done, a no-op, or refused by the job's state (409;
#: the /v1 front says 400).
WRITE_OK = frozenset({200, 201, 202, 204, 400, 409})

Kind = Literal[
    "open",
    "list",
    "fleet",
    "admin",
    "job_read",
    "job_write",
    "file_read",
    "file_delete",
    "upload",
    "create_native",
    "create_openai",
    "hook_create",
    "hook_delete",
    "sweep_create",
    "sweep_read",
    "sweep_write",
]


@dataclass(frozen=True)
class Row:
    kind: Kind
    #: A JSON body; ``{file}`` in a string value is replaced by the target file's id.
    body: Any = None
    #: A concrete path for ``open`` rows whose template has a free segment.
    example: str | None = None


T = PREFIX
J = "{job_id:str}"
F = "{file_id:str}"
S = "{sweep_id:str}"
#: A sweep's base and grid: small, so that its trials are few.
SWEEP_BASE = {"data_path": "d#10", "model_path": "m", "output_dir": "output/walk"}
SWEEP_GRID = {"train_args.lora_rank": {"values": [8]}}

#: (method, path template as the app names it) -> its rule.
ROUTES: dict[tuple[str, str], Row] = {
    ("GET", f"{T}/health"): Row("open"),
    ("GET", f"{T}/health/ready"): Row("open"),
    ("GET", "/"): Row("open"),
    ("GET", "/dashboard/{file_path:path}"): Row("open", example="/dashboard/app.js"),
    ("GET", "/docs"): Row("open"),
    ("GET", "/docs/assets/{file_path:path}"): Row("open", example="/docs/assets/swagger-ui.css"),
    ("GET", "/schema"): Row("open"),
    ("GET", "/schema/swagger"): Row("open"),
    ("GET", "/schema/{path:str}"): Row("open", example="/schema/swagger"),
    ("GET", "/schema/openapi.json"): Row("open"),
    ("GET", "/schema/oauth2-redirect.html"): Row("open"),
    ("GET", "/asyncapi.json"): Row("open"),
    ("GET", "/metrics"): Row("fleet"),
    ("GET", f"{T}/jobs"): Row("list"),
    ("GET", f"{T}/jobs/changes/stream"): Row("list"),
    ("GET", f"{T}/queue"): Row("list"),
    ("GET", f"{T}/queue/processor/status"): Row("list"),
    ("GET", f"{T}/gpus"): Row("list"),
    ("GET", f"{T}/system/status"): Row("list"),
    ("GET", f"{T}/usage"): Row("list"),
    ("GET", f"{T}/webhooks"): Row("list"),
    ("POST", f"{T}/webhooks"): Row("hook_create", {"url": "http://127.0.0.1:9/alice-hook"}),
    ("DELETE", f"{T}/webhooks/{{webhook_id:str}}"): Row("hook_delete"),
    ("POST", f"{T}/queue/process"): Row("admin"),
    ("POST", f"{T}/queue/processor/start"): Row("admin"),
    ("POST", f"{T}/queue/processor/stop"): Row("admin"),
    ("GET", f"{T}/jobs/{J}"): Row("job_read"),
    ("GET", f"{T}/jobs/{J}/status"): Row("job_read"),
    ("GET", f"{T}/jobs/{J}/progress"): Row("job_read"),
    ("GET", f"{T}/jobs/{J}/logs"): Row("job_read"),
    ("GET", f"{T}/jobs/{J}/events"): Row("job_read"),
    ("GET", f"{T}/jobs/{J}/events/stream"): Row("job_read"),
    ("GET", f"{T}/jobs/{J}/logs/stream"): Row("job_read"),
    ("GET", f"{T}/jobs/{J}/progress/stream"): Row("job_read"),
    ("GET", f"{T}/queue/{J}/status"): Row("job_read"),
    ("POST", f"{T}/jobs"): Row(
        "create_native", {"data_path": None, "model_path": "m", "training_file": "{file}"}
    ),
    ("DELETE", f"{T}/jobs/{J}"): Row("job_write"),
    ("POST", f"{T}/jobs/{J}/cancel"): Row("job_write"),
    ("PUT", f"{T}/jobs/{J}/priority"): Row("job_write", {"priority": 7}),
    ("PATCH", f"{T}/jobs/{J}/priority"): Row("job_write", {"priority": 3}),
    ("POST", f"{T}/jobs/{J}/export"): Row("job_write"),
    ("POST", f"{T}/jobs/{J}/pause"): Row("job_write"),
    ("POST", f"{T}/jobs/{J}/resume"): Row("job_write"),
    ("POST", f"{T}/jobs/{J}/start"): Row("job_write"),
    ("POST", f"{T}/jobs/{J}/stop"): Row("job_write"),
    ("DELETE", f"{T}/queue/{J}"): Row("job_write"),
    ("GET", f"{T}/sweeps"): Row("list"),
    ("POST", f"{T}/sweeps"): Row(
        "sweep_create", {"name": "walk", "base": SWEEP_BASE, "parameters": SWEEP_GRID}
    ),
    ("GET", f"{T}/sweeps/{S}"): Row("sweep_read"),
    ("GET", f"{T}/sweeps/{S}/results.csv"): Row("sweep_read"),
    ("POST", f"{T}/sweeps/{S}/stop"): Row("sweep_write"),
    ("POST", f"{T}/sweeps/{S}/cancel"): Row("sweep_write"),
    ("GET", f"{T}/runners"): Row("admin"),
    ("POST", f"{T}/runners/{{runner_id:str}}/drain"): Row(
        "admin", {"reason": "the walk"}, example=f"{T}/runners/runner-1/drain"
    ),
    ("POST", f"{T}/runners/{{runner_id:str}}/undrain"): Row(
        "admin", example=f"{T}/runners/runner-1/undrain"
    ),
    ("GET", "/v1/files"): Row("list"),
    ("POST", "/v1/files"): Row("upload"),
    ("GET", f"/v1/files/{F}"): Row("file_read"),
    ("GET", f"/v1/files/{F}/content"): Row("file_read"),
    ("DELETE", f"/v1/files/{F}"): Row("file_delete"),
    ("GET", "/v1/fine_tuning/jobs"): Row("list"),
    ("POST", "/v1/fine_tuning/jobs"): Row(
        "create_openai", {"model": "Qwen/Qwen2.5-0.5B", "training_file": "{file}"}
    ),
    ("GET", f"/v1/fine_tuning/jobs/{J}"): Row("job_read"),
    ("GET", f"/v1/fine_tuning/jobs/{J}/events"): Row("job_read"),
    ("GET", f"/v1/fine_tuning/jobs/{J}/checkpoints"): Row("job_read"),
    ("POST", f"/v1/fine_tuning/jobs/{J}/cancel"): Row("job_write"),
    ("POST", f"/v1/fine_tuning/jobs/{J}/pause"): Row("job_write"),
    ("POST", f"/v1/fine_tuning/jobs/{J}/resume"): Row("job_write"),
}


def expected(kind: Kind, who: Who, target: Target) -> frozenset[int]:  # noqa: C901 - the table
    """The statuses a call may answer: the rule of each kind, in one place."""
    if kind == "open":
        return frozenset({200})
    if who == "none":
        return frozenset({401})
    if kind == "list":
        return frozenset({200})
    if kind == "fleet":
        return frozenset({403} if who == "user" else {200})
    if kind == "admin":
        return frozenset({200} if who == "admin" else {403})
    sees = target == "own" or (target == "other" and who != "user")
    if kind in ("job_read", "sweep_read"):
        return frozenset({200} if sees and target != "none" else {404})
    if who == "viewer" and kind != "file_read":
        return frozenset({403})
    if kind in ("job_write", "sweep_write"):
        return WRITE_OK if sees and target != "none" else frozenset({404})
    if kind == "sweep_create":
        return frozenset({201})
    file_seen = (target == "own" and who in ("user", "admin")) or (
        target == "other" and who == "admin"
    )
    if kind in ("file_read", "file_delete"):
        return frozenset({200} if file_seen else {404})
    if kind == "upload":
        return frozenset({200})
    if kind == "hook_create":
        return frozenset({201})
    if kind == "hook_delete":
        return frozenset({204} if file_seen else {404})
    # A job trains on its own owner's files only (the admin's owner has none here).
    trains = target == "own" and who == "user"
    if kind == "create_native":
        return frozenset({201} if trains else {422})
    return frozenset({200} if trains else {400})


def targets_of(kind: Kind) -> tuple[Target, ...]:
    if kind in ("job_read", "job_write", "file_read", "file_delete", "hook_delete"):
        return TARGETS
    if kind in ("sweep_read", "sweep_write"):
        return TARGETS
    if kind in ("create_native", "create_openai"):
        return TARGETS
    return ("none",)


# --- which routes exist: the app, its OpenAPI document, the dashboard's calls ---------------


def _untyped(template: str) -> str:
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", template)


def app_routes(app: Litestar) -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for route in app.routes
        for method in getattr(route, "methods", ())
        if method not in ("OPTIONS", "HEAD")
    }


def openapi_routes(app: Litestar) -> set[tuple[str, str]]:
    found = set()
    for path, item in (app.openapi_schema.paths or {}).items():
        for method in ("get", "put", "post", "delete", "patch"):
            if getattr(item, method, None) is not None:
                found.add((method.upper(), path))
    return found


_CALL = re.compile(
    r"\b(get|post|call|getFiles|postFiles|stream)\(\s*(?:\"(\w+)\",\s*)?([`\"])(/[^`\"]*)\3"
)


def dashboard_calls() -> set[tuple[str, str]]:
    """(method, path) of every API call in the dashboard's scripts, ids as ``{job_id}``."""
    found = set()
    for script in sorted(ASSETS.glob("*.js")):
        for fn, method, _, raw in _CALL.findall(script.read_text(encoding="utf-8")):
            verb = method or {"post": "POST", "postFiles": "POST"}.get(fn, "GET")
            path = raw.split("?")[0].split("${owner")[0]
            path = re.sub(r"\$\{encodeURIComponent\([^}]*\}\)?", "{job_id}", path)
            path = re.sub(r"/\$\{[^}]*\}$", "/{any}", path)
            base = "/v1" if fn in ("getFiles", "postFiles") else PREFIX
            found.add((verb, base + path))
    # Job pages call relative to the job: `${path}/...` with path = /jobs/<id>.
    for script in sorted(ASSETS.glob("*.js")):
        for fn, rest in re.findall(
            r"\b(get|post|stream)\(`\$\{path\}(/[^`?$]*)", script.read_text(encoding="utf-8")
        ):
            found.add(("POST" if fn == "post" else "GET", f"{PREFIX}/jobs/{{job_id}}{rest}"))
    return found


def _matches(template: str, path: str) -> bool:
    pattern = re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(_untyped(template)))
    return re.fullmatch(pattern, _untyped(path)) is not None


def uncovered(app: Litestar, table: Iterable[tuple[str, str]] = ROUTES) -> list[str]:
    """Routes with no row: each must decide its rule before the walk passes."""
    rows = set(table)
    untyped = {(m, _untyped(p)) for m, p in rows}
    missing = [f"app: {m} {p}" for m, p in sorted(app_routes(app) - rows)]
    missing += [f"openapi: {m} {p}" for m, p in sorted(openapi_routes(app) - untyped)]
    for method, path in sorted(dashboard_calls()):
        if not any(m == method and _matches(p, path) for m, p in rows):
            missing.append(f"dashboard: {method} {path}")
    return missing


# --- the world the walk runs in ----------------------------------------------------------------


@dataclass
class World:
    stack: Stack
    http: httpx.AsyncClient
    secrets: dict[Who, str]
    bob_secret: str
    job: dict[str, str]
    file: dict[str, str]
    hook: dict[str, str] = field(default_factory=dict)
    sweep: dict[str, str] = field(default_factory=dict)
    bob_files: set[str] = field(default_factory=set)
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def headers(self, who: Who | Literal["bob"]) -> dict[str, str]:
        if who == "none":
            return {}
        secret = self.bob_secret if who == "bob" else self.secrets[who]
        return {"Authorization": f"Bearer {secret}"}

    async def new_job(self, owner: Literal["user", "bob"]) -> str:
        name = "alice" if owner == "user" else BOB
        job_id = f"{name}-{next(self.counter)}"
        body = {"data_path": "d#10", "model_path": "m", "job_id": job_id}
        response = await self.http.post(f"{PREFIX}/jobs", json=body, headers=self.headers(owner))
        assert response.status_code == 201, response.text
        return job_id

    async def new_hook(self, owner: Literal["user", "bob"]) -> str:
        name = "alice" if owner == "user" else BOB
        body = {
            "url": f"http://127.0.0.1:9/{name}-hook",
            "webhook_id": f"{name}-hook-{next(self.counter)}",
        }
        response = await self.http.post(
            f"{PREFIX}/webhooks", json=body, headers=self.headers(owner)
        )
        assert response.status_code == 201, response.text
        hook_id: str = response.json()["webhook_id"]
        return hook_id

    async def new_sweep(self, owner: Literal["user", "bob"]) -> str:
        name = "alice" if owner == "user" else BOB
        body = {
            "sweep_id": f"{name}-sweep-{next(self.counter)}",
            "name": "walk",
            "base": SWEEP_BASE,
            "parameters": SWEEP_GRID,
        }
        response = await self.http.post(f"{PREFIX}/sweeps", json=body, headers=self.headers(owner))
        assert response.status_code == 201, response.text
        sweep_id: str = response.json()["sweep_id"]
        return sweep_id

    async def new_file(self, owner: Literal["user", "bob"]) -> str:
        line = BOB_LINE if owner == "bob" else "alice-line"
        content = json.dumps({"query": line, "response": "ok"}) + "\n"
        response = await self.http.post(
            "/v1/files",
            files={"file": ("d.jsonl", content.encode(), "application/jsonl")},
            data={"purpose": "fine-tune"},
            headers=self.headers(owner),
        )
        assert response.status_code == 200, response.text
        file_id: str = response.json()["id"]
        if owner == "bob":
            self.bob_files.add(file_id)
        return file_id


@contextlib.asynccontextmanager
async def world_of(tmp_path: Path) -> AsyncIterator[tuple[World, Litestar]]:
    view = AccessView()
    async with running_stack(
        tmp_path, MemoryReadModel(), access=view, write_rate=0, stream_heartbeat_s=0.2
    ) as (stack, _):
        experiments = ExperimentsService(stack.nc, store=stack.store, retry_s=0.3)
        await experiments.start()
        await experiments.wait_ready()
        app = create_app(dataclasses.replace(stack.deps, experiments=experiments))
        follower = AccessFollower(stack.nc, view)
        await follower.start(timeout=10)
        try:
            keys = {
                "admin": ("ops", "admin"),
                "viewer": ("watch", "viewer"),
                "user": ("alice", "user"),
            }
            secrets: dict[Who, str] = {}
            for who, (owner, role) in keys.items():
                secrets[who] = await issue(stack, view, f"key-{who}", owner, role)  # type: ignore[index]
            bob_secret = await issue(stack, view, "key-bob", BOB, "user")
            async with (
                serving(app) as base,
                httpx.AsyncClient(base_url=base.removesuffix(PREFIX), timeout=10) as http,
            ):
                world = World(stack, http, secrets, bob_secret, {}, {})
                world.file = {
                    "own": await world.new_file("user"),
                    "other": await world.new_file("bob"),
                }
                world.file["none"] = "file-000000000000000000000000"
                world.job = {
                    "own": await world.new_job("user"),
                    "other": await world.new_job("bob"),
                }
                world.job["none"] = "nosuchjob-1"
                world.hook = {
                    "own": await world.new_hook("user"),
                    "other": await world.new_hook("bob"),
                }
                world.hook["none"] = "nosuchhook-1"
                world.sweep = {
                    "own": await world.new_sweep("user"),
                    "other": await world.new_sweep("bob"),
                }
                world.sweep["none"] = "nosuchsweep-1"
                await stack.settled()
                # bob's job holds GPU 0 of a live runner: the GPU view must not name it.
                now = datetime.now(UTC)
                await stack.read_model.put_runner_snapshot("runner-1", heartbeat(2), now)
                await stack.start(world.job["other"], runner="runner-1", gpus=(0,))
                yield world, app
        finally:
            await follower.stop()
            await experiments.stop()


# --- the walk ------------------------------------------------------------------------------------


async def _call(world: World, method: str, url: str, who: Who, body: Any) -> tuple[int, str]:
    headers = world.headers(who)
    if method == "POST" and url == "/v1/files":
        content = b'{"query": "q", "response": "r"}\n'
        response = await world.http.post(
            url,
            files={"file": ("u.jsonl", content, "application/jsonl")},
            data={"purpose": "fine-tune"},
            headers=headers,
        )
        return response.status_code, response.text
    async with world.http.stream(method, url, json=body, headers=headers) as response:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            return response.status_code, (await response.aread()).decode(errors="replace")
        chunks: list[bytes] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):  # a follow stream does not end: read a while
                # A loop, not a comprehension: what came before the timeout is kept.
                async for chunk in response.aiter_bytes():
                    chunks.append(chunk)  # noqa: PERF401
        return response.status_code, b"".join(chunks).decode(errors="replace")


def _fill(value: Any, file_id: str) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, file_id) for k, v in value.items() if v is not None}
    if value == "{file}":
        return file_id
    return value


def _leaks(world: World, text: str, asked: Iterable[str]) -> list[str]:
    """What of bob's appears in a body, besides the ids the caller itself sent."""
    for own_words in asked:
        text = text.replace(own_words, "")
    found = [word for word in (BOB, BOB_LINE) if word in text]
    return found + [file_id for file_id in world.bob_files if file_id in text]


def _code(text: str) -> str | None:
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    code = error.get("code") if isinstance(error, dict) else body.get("code")
    return str(code) if code is not None else None


async def walk(world: World, rows: dict[tuple[str, str], Row]) -> list[str]:
    """Call every row as every role on every target; return what broke the rule."""
    wrong: list[str] = []
    for (method, template), row in rows.items():
        for who in WHO:
            answers: dict[Target, tuple[int, str]] = {}
            for target in targets_of(row.kind):
                job_id, file_id = world.job[target], world.file[target]
                allowed = expected(row.kind, who, target)
                fresh = row.kind in ("job_write", "file_delete") and allowed != {404}
                if fresh and row.kind == "job_write" and allowed != {403}:
                    job_id = await world.new_job("user" if target == "own" else "bob")
                if fresh and row.kind == "file_delete" and target != "none":
                    file_id = await world.new_file("user" if target == "own" else "bob")
                hook_id = world.hook[target]
                if row.kind == "hook_delete" and allowed == {204}:
                    hook_id = await world.new_hook("user" if target == "own" else "bob")
                url = row.example or template.replace(J, job_id).replace(F, file_id)
                url = url.replace("{webhook_id:str}", hook_id).replace(S, world.sweep[target])
                body = _fill(row.body, file_id) if row.body is not None else None
                status, text = await _call(world, method, url, who, body)
                answers[target] = (status, text)
                where = f"{method} {template} as {who} on {target}'s"
                if status not in allowed:
                    wrong.append(f"{where}: {status} not in {sorted(allowed)}: {text[:160]}")
                if who in ("user", "none"):
                    leaked = _leaks(world, text, (job_id, file_id, hook_id, world.sweep[target]))
                    if leaked:
                        wrong.append(f"{where}: the body names {leaked}: {text[:160]}")
                await world.stack.settled()
            other, unknown = answers.get("other"), answers.get("none")
            differs = (
                other
                and unknown
                and (other[0], _code(other[1]))
                != (
                    unknown[0],
                    _code(unknown[1]),
                )
            )
            if who == "user" and unknown and unknown[0] >= 400 and differs:
                assert other is not None
                wrong.append(
                    f"{method} {template} as user: another owner's answers "
                    f"{other[0]} {_code(other[1])}, an unknown id {unknown[0]} {_code(unknown[1])}"
                )
    return wrong


# --- the tests ------------------------------------------------------------------------------------


async def test_every_route_keeps_each_owner_to_its_own(tmp_path: Path) -> None:
    async with world_of(tmp_path) as (world, app):
        assert not uncovered(app), "routes without a rule in ROUTES:\n" + "\n".join(uncovered(app))
        wrong = await walk(world, ROUTES)
    assert not wrong, "\n".join(wrong)


def test_a_route_without_a_row_fails_the_walk() -> None:
    from swift_trainer.api import ApiDeps, create_app

    @get("/api/v1/training/brand-new", sync_to_thread=False)
    def brand_new() -> str:
        return "x"

    app = create_app(ApiDeps(commands=None, read_model=MemoryReadModel()))  # type: ignore[arg-type]
    assert uncovered(app) == []
    app.register(brand_new)
    assert uncovered(app) == [
        "app: GET /api/v1/training/brand-new",
        "openapi: GET /api/v1/training/brand-new",
    ]
    without_gpus = [k for k in ROUTES if k[1] != f"{T}/gpus"]
    assert f"dashboard: GET {T}/gpus" in uncovered(app, without_gpus)


@pytest.mark.parametrize("plant", ["file_owner", "job_owner"])
async def test_a_planted_missing_owner_check_fails_the_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plant: str
) -> None:
    if plant == "file_owner":
        monkeypatch.setattr(Principal, "may_see_file", lambda self, owner: True)
        rows = {k: r for k, r in ROUTES.items() if k[1].startswith("/v1/files")}
    else:
        from swift_trainer.api.auth.guard import AuthGuard

        async def no_check(self: AuthGuard, caller: Principal, job_id: str) -> None:
            return None

        monkeypatch.setattr(AuthGuard, "_check_owner", no_check)
        rows = {k: r for k, r in ROUTES.items() if k == ("GET", f"{T}/jobs/{J}/events")}
    async with world_of(tmp_path) as (world, _):
        wrong = await walk(world, rows)
    assert any("as user on other's" in w for w in wrong), wrong
