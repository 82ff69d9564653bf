"""API keys on every route: the real stack (nats-server, handler, store, feeds), keys issued
as commands and followed by the API's access view, requests through the ASGI app.

Roles in the table: no key, a viewer, ``bob`` (a user who does not own the job), ``alice``
(the user who owns it) and an admin.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from swift_trainer.core import commands as c
from swift_trainer.core.access import hash_secret, new_secret
from swift_trainer.projections.access_view import AccessFollower, AccessView
from swift_trainer.projections.read_models import MemoryReadModel
from swift_trainer.projections.read_models.views import QueueEntry, QueueView

from .conftest import PREFIX, Stack, running_stack, wait_for

ROLES = ("none", "viewer", "bob", "alice", "admin")
SENTINEL = "stk_SENTINEL-secret-that-must-never-be-seen-0123456789abcdef"


@dataclass
class Secured:
    stack: Stack
    view: AccessView
    secrets: dict[str, str]
    key_ids: dict[str, str]
    job_id: str

    def headers(self, role: str) -> dict[str, str]:
        if role == "none":
            return {}
        return {"Authorization": f"Bearer {self.secrets[role]}"}

    async def call(self, role: str, method: str, path: str, body: Any = None) -> httpx.Response:
        return await self.stack.client.request(method, path, json=body, headers=self.headers(role))


async def issue(stack: Stack, view: AccessView, key_id: str, owner: str, role: str) -> str:
    secret = new_secret() if key_id != "sentinel" else SENTINEL
    reply = await stack.commands.send(
        c.IssueKey(key_id=key_id, owner=owner, role=role, secret_sha256=hash_secret(secret))  # type: ignore[arg-type]
    )
    assert reply.ok, reply
    await wait_for(
        lambda: asyncio.sleep(0, key_id in view.state.keys), what=f"key {key_id} in the view"
    )
    return secret


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    view = AccessView()
    async with running_stack(tmp_path, MemoryReadModel(), access=view, write_rate=0) as (
        stack,
        _,
    ):
        follower = AccessFollower(stack.nc, view)
        await follower.start(timeout=10)
        try:
            owners = {"viewer": "ops", "bob": "bob", "alice": "alice", "admin": "ops"}
            roles = {"viewer": "viewer", "bob": "user", "alice": "user", "admin": "admin"}
            secrets = {}
            key_ids = {}
            for name, owner in owners.items():
                key_ids[name] = f"key-{name}"
                secrets[name] = await issue(stack, view, key_ids[name], owner, roles[name])
            response = await stack.client.post(
                PREFIX + "/jobs",
                json={"data_path": "d#10", "model_path": "m", "job_id": "alice-1"},
                headers={"Authorization": f"Bearer {secrets['alice']}"},
            )
            assert response.status_code == 201, response.text
            await stack.settled()
            yield Secured(stack, view, secrets, key_ids, "alice-1")
        finally:
            await follower.stop()


J = "alice-1"
T = PREFIX
#: (method, path, body, expected status for none, viewer, bob, alice, admin)
ROUTES: list[tuple[str, str, Any, tuple[int, int, int, int, int]]] = [
    ("GET", f"{T}/health", None, (200, 200, 200, 200, 200)),
    ("GET", f"{T}/health/ready", None, (200, 200, 200, 200, 200)),
    ("GET", "/metrics", None, (401, 200, 403, 403, 200)),
    ("GET", "/", None, (200, 200, 200, 200, 200)),
    ("GET", f"{T}/jobs", None, (401, 200, 200, 200, 200)),
    ("GET", f"{T}/jobs/{J}", None, (401, 200, 404, 200, 200)),
    ("GET", f"{T}/jobs/{J}/status", None, (401, 200, 404, 200, 200)),
    ("GET", f"{T}/jobs/{J}/progress", None, (401, 200, 404, 200, 200)),
    ("GET", f"{T}/jobs/{J}/logs", None, (401, 200, 404, 200, 200)),
    ("GET", f"{T}/jobs/{J}/events", None, (401, 200, 404, 200, 200)),
    ("GET", f"{T}/queue", None, (401, 200, 200, 200, 200)),
    ("GET", f"{T}/queue/{J}/status", None, (401, 200, 404, 200, 200)),
    ("GET", f"{T}/queue/processor/status", None, (401, 200, 200, 200, 200)),
    ("GET", f"{T}/gpus", None, (401, 200, 200, 200, 200)),
    ("GET", f"{T}/system/status", None, (401, 200, 200, 200, 200)),
    ("GET", "/v1/files", None, (401, 200, 200, 200, 200)),
    ("GET", "/v1/fine_tuning/jobs", None, (401, 200, 200, 200, 200)),
    ("GET", f"/v1/fine_tuning/jobs/{J}", None, (401, 200, 404, 200, 200)),
    ("GET", f"/v1/fine_tuning/jobs/{J}/events", None, (401, 200, 404, 200, 200)),
    # Admin actions.
    ("POST", f"{T}/queue/process", None, (401, 403, 403, 403, 200)),
    ("POST", f"{T}/queue/processor/stop", None, (401, 403, 403, 403, 200)),
    ("POST", f"{T}/queue/processor/start", None, (401, 403, 403, 403, 200)),
    ("GET", f"{T}/runners", None, (401, 403, 403, 403, 200)),
    ("POST", f"{T}/runners/r9/drain", {"reason": "maintenance"}, (401, 403, 403, 403, 200)),
    ("POST", f"{T}/runners/r9/undrain", {}, (401, 403, 403, 403, 200)),
    # Writes on alice's job: the owner and an admin act (the admin's repeat is a no-op).
    ("PUT", f"{T}/jobs/{J}/priority", {"priority": 7}, (401, 403, 404, 200, 200)),
    ("POST", f"/v1/fine_tuning/jobs/{J}/pause", None, (401, 403, 404, 200, 200)),
    ("POST", f"{T}/jobs/{J}/cancel", None, (401, 403, 404, 200, 200)),
    ("DELETE", f"{T}/jobs/{J}", None, (401, 403, 404, 204, 404)),
]


async def test_every_route_answers_each_role_as_the_table_says(secured: Secured) -> None:
    # The rows run in order, each role in turn: reads, admin actions, then writes that
    # move alice's job on (pause, cancel, delete).
    wrong = []
    for method, path, body, expected in ROUTES:
        for role, status in zip(ROLES, expected, strict=True):
            response = await secured.call(role, method, path, body)
            if response.status_code != status:
                wrong.append((method, path, role, status, response.status_code, response.text))
            await secured.stack.settled()
    assert not wrong, "\n".join(map(str, wrong))


async def test_401_has_a_bearer_challenge_in_both_shapes(secured: Secured) -> None:
    native = await secured.call("none", "GET", f"{T}/jobs")
    assert native.status_code == 401
    assert native.headers["www-authenticate"].startswith("Bearer")
    assert native.headers["content-type"].startswith("application/problem+json")
    assert native.json()["code"] == "unauthorized"
    bad = await secured.stack.client.get(
        f"{T}/jobs", headers={"Authorization": "Bearer stk_not-a-key"}
    )
    assert bad.status_code == 401
    openai = await secured.call("none", "GET", "/v1/fine_tuning/jobs")
    assert openai.status_code == 401
    assert openai.headers["www-authenticate"].startswith("Bearer")
    assert openai.json()["error"]["code"] == "unauthorized"


async def test_a_user_lists_only_own_jobs_and_sees_others_queue_places_without_ids(
    secured: Secured,
) -> None:
    bob_job = await secured.call("bob", "POST", f"{T}/jobs", {"data_path": "d", "model_path": "m"})
    assert bob_job.status_code == 201, bob_job.text
    await secured.stack.settled()
    bob_list = (await secured.call("bob", "GET", f"{T}/jobs")).json()["items"]
    assert [job["job_id"] for job in bob_list] == [bob_job.json()["job_id"]]
    admin_list = (await secured.call("admin", "GET", f"{T}/jobs")).json()["items"]
    assert {job["job_id"] for job in admin_list} == {J, bob_job.json()["job_id"]}
    openai = (await secured.call("bob", "GET", "/v1/fine_tuning/jobs")).json()["data"]
    assert [job["id"] for job in openai] == [bob_job.json()["job_id"]]
    queue = (await secured.call("bob", "GET", f"{T}/queue")).json()["entries"]
    assert len(queue) == 2
    assert sorted(str(entry["job_id"]) for entry in queue) == sorted(
        ["None", bob_job.json()["job_id"]]
    )


async def test_a_user_key_sees_only_own_jobs_whatever_the_owner_filter(
    secured: Secured,
) -> None:
    bob_job = await secured.call("bob", "POST", f"{T}/jobs", {"data_path": "d", "model_path": "m"})
    assert bob_job.status_code == 201, bob_job.text
    bob_id = bob_job.json()["job_id"]
    await secured.stack.settled()

    async def listed(role: str, **params: str) -> list[str]:
        response = await secured.stack.client.get(
            f"{T}/jobs", params=params, headers=secured.headers(role)
        )
        assert response.status_code == 200, response.text
        return [job["job_id"] for job in response.json()["items"]]

    assert await listed("admin", owner="alice") == [J]
    assert await listed("viewer", owner="bob") == [bob_id]
    assert await listed("bob", owner="bob") == [bob_id]
    assert await listed("bob", owner="alice") == []
    assert await listed("bob", owner="alice", label="x=y") == []
    assert await listed("alice") == [J]
    assert await listed("alice", status="queued") == [J]


#: (caller, sees alice's job id and reasons): everyone sees position, priority, GPUs and
#: whether a quota holds the job; only its owner and the roles that see everything see more.
QUEUE_VIEWS = [("viewer", True), ("bob", False), ("alice", True), ("admin", True)]


@pytest.mark.parametrize(("role", "sees_all"), QUEUE_VIEWS)
async def test_the_queue_shows_others_entries_without_ids_paths_or_owners(
    secured: Secured, role: str, sees_all: bool
) -> None:
    blocked = "owner 'alice' has 1 of its max_gpus 1 GPUs in use; it starts when ..."
    unplaceable = "needs 9 GPUs on one runner, but the largest live runner has 8"
    await secured.stack.read_model.set_queue_view(
        QueueView(
            entries=(
                QueueEntry(
                    job_id=J,
                    position=1,
                    priority=7,
                    gpu_count=2,
                    unplaceable=unplaceable,
                    blocked_by="owner_gpu_quota",
                    blocked_reason=blocked,
                ),
            ),
            computed_at=datetime.now(UTC),
            as_of_position=10**9,
        )
    )
    response = await secured.call(role, "GET", f"{T}/queue")
    assert response.status_code == 200, response.text
    [entry] = response.json()["entries"]
    assert (entry["position"], entry["priority"], entry["gpu_count"]) == (1, 7, 2)
    assert entry["blocked_by"] == "owner_gpu_quota"
    shown = (entry["job_id"], entry["unplaceable"], entry["blocked_reason"])
    assert shown == ((J, unplaceable, blocked) if sees_all else (None, None, None))
    if not sees_all:
        text = response.text
        assert J not in text and "alice" not in text and "d#10" not in text


async def test_owner_and_actor_are_recorded_on_the_job_events(secured: Secured) -> None:
    job = await secured.stack.read_model.get_job(J)
    assert job is not None and job.owner == "alice"
    events = await secured.stack.store.read_stream(f"job-{J}")
    assert events and all(event.metadata.actor == "key-alice" for event in events)
    # The body cannot claim another owner.
    response = await secured.call(
        "bob", "POST", f"{T}/jobs", {"data_path": "d", "model_path": "m", "job_id": "b-2"}
    )
    assert response.status_code == 201
    await secured.stack.settled()
    created = await secured.stack.read_model.get_job("b-2")
    assert created is not None and created.owner == "bob"


async def test_revocation_takes_effect_within_a_second(secured: Secured) -> None:
    assert (await secured.call("bob", "GET", f"{T}/jobs")).status_code == 200
    reply = await secured.stack.commands.send(c.RevokeKey(key_id="key-bob", reason="left"))
    assert reply.ok, reply
    started = time.monotonic()
    while (await secured.call("bob", "GET", f"{T}/jobs")).status_code != 401:
        assert time.monotonic() - started < 1.0, "revoked key still accepted after 1 s"
        await asyncio.sleep(0.01)


async def test_a_sentinel_secret_never_reaches_logs_events_or_read_models(
    secured: Secured, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await issue(secured.stack, secured.view, "sentinel", "carol", "user")
    headers = {"Authorization": f"Bearer {SENTINEL}"}
    created = await secured.stack.client.post(
        f"{T}/jobs", json={"data_path": "d", "model_path": "m", "job_id": "c-1"}, headers=headers
    )
    assert created.status_code == 201
    await secured.stack.settled()
    assert (await secured.stack.client.get(f"{T}/jobs/c-1", headers=headers)).status_code == 200
    stored = await secured.stack.store.read_all(limit=10_000)
    blob = b"".join(e.payload + msgspec.json.encode(e.metadata) for e in stored)
    assert SENTINEL.encode() not in blob
    assert hash_secret(SENTINEL).encode() in blob  # only the hash is kept
    read = await secured.stack.read_model.get_job_json("c-1")
    assert read is not None and SENTINEL.encode() not in read
    assert SENTINEL not in caplog.text


async def test_over_quota_submit_answers_429_with_the_limit(secured: Secured) -> None:
    reply = await secured.stack.commands.send(c.SetQuota(owner="alice", max_queued_jobs=1))
    assert reply.ok
    await wait_for(
        lambda: asyncio.sleep(0, secured.view.quota("alice").max_queued_jobs == 1),
        what="quota in the view",
    )
    response = await secured.call(
        "alice", "POST", f"{T}/jobs", {"data_path": "d", "model_path": "m"}
    )
    assert response.status_code == 429, response.text
    problem = response.json()
    assert problem["code"] == "quota_exceeded"
    assert problem["errors"][0]["key"] == "max_queued_jobs"
    assert "1" in problem["detail"]
    other = await secured.call("bob", "POST", f"{T}/jobs", {"data_path": "d", "model_path": "m"})
    assert other.status_code == 201


async def test_writes_past_the_rate_limit_get_429_with_retry_after(tmp_path: Path) -> None:
    view = AccessView()
    async with running_stack(
        tmp_path, MemoryReadModel(), access=view, write_rate=0.5, write_burst=2
    ) as (stack, _):
        follower = AccessFollower(stack.nc, view)
        await follower.start(timeout=10)
        try:
            secret = await issue(stack, view, "key-fast", "fast", "user")
            headers = {"Authorization": f"Bearer {secret}"}
            statuses = []
            for _ in range(3):
                response = await stack.client.post(
                    f"{T}/jobs", json={"data_path": "d", "model_path": "m"}, headers=headers
                )
                statuses.append(response.status_code)
            assert statuses == [201, 201, 429]
            assert int(response.headers["retry-after"]) >= 1
            # Reads are not limited.
            assert (await stack.client.get(f"{T}/jobs", headers=headers)).status_code == 200
        finally:
            await follower.stop()


def test_an_app_with_a_route_that_skips_the_key_check_is_refused() -> None:
    from litestar import Litestar, Request, Router, get

    from swift_trainer.api.auth.guard import AuthGuard, check_every_route_guarded

    guard = AuthGuard(None, PREFIX + "/training", MemoryReadModel())

    @get("/a", sync_to_thread=False)
    def a() -> str:
        return "a"

    @get("/b", sync_to_thread=False)
    def b() -> str:
        return "b"

    async def own_hook(_request: Request[Any, Any, Any]) -> None:
        return None

    guarded = Litestar([a, Router("/r", route_handlers=[b])], before_request=guard.before_request)
    check_every_route_guarded(guarded, guard)
    bypass = Router("/r", route_handlers=[b], before_request=own_hook)
    with pytest.raises(RuntimeError, match="/r/b answers without the key check"):
        check_every_route_guarded(Litestar([a, bypass], before_request=guard.before_request), guard)
