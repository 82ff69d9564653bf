"""``GET /usage`` on the real stack: the fold of the stored events, filtered by the caller."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from swift_trainer.client.usage_table import usage_csv
from swift_trainer.core import commands as c
from swift_trainer.projections.access_view import AccessFollower, AccessView
from swift_trainer.projections.read_models import MemoryReadModel

from .conftest import PREFIX, Stack, running_stack
from .test_auth import issue


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[tuple[Stack, dict[str, str]]]:
    view = AccessView()
    async with running_stack(tmp_path, MemoryReadModel(), access=view, write_rate=0) as (
        stack,
        _,
    ):
        follower = AccessFollower(stack.nc, view)
        await follower.start(timeout=10)
        try:
            secrets = {
                "admin": await issue(stack, view, "k-admin", "ops", "admin"),
                "alice": await issue(stack, view, "k-alice", "alice", "user"),
                "bob": await issue(stack, view, "k-bob", "bob", "user"),
            }
            yield stack, {k: f"Bearer {v}" for k, v in secrets.items()}
        finally:
            await follower.stop()


async def _job(stack: Stack, key: str, job_id: str, labels: dict[str, str], gpus: int = 1) -> None:
    body = {
        "data_path": "d#1",
        "model_path": "m",
        "job_id": job_id,
        "labels": labels,
        "gpu_count": gpus,
    }
    response = await stack.client.post(PREFIX + "/jobs", json=body, headers={"Authorization": key})
    assert response.status_code == 201, response.text
    await stack.settled()


async def test_usage_per_owner_label_and_day_and_a_user_sees_own_rows(
    keyed: tuple[Stack, dict[str, str]],
) -> None:
    stack, keys = keyed
    await _job(stack, keys["alice"], "a1", {"team": "nlp"}, gpus=2)
    await _job(stack, keys["bob"], "b1", {})
    await stack.start("a1", gpus=(0, 1))
    await stack.start("b1", gpus=(2,))
    await stack.succeed("a1")
    failed = c.ReportFailed(job_id="b1", attempt=1, runner_id="runner-1", exit_code=1, reason="x")
    await stack.send(failed)

    async def report(who: str, **params: str) -> dict[str, object]:
        response = await stack.client.get(
            PREFIX + "/usage", params=params, headers={"Authorization": keys[who]}
        )
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        return body

    admin = await report("admin")
    rows = {r["group"]: r for r in admin["rows"]}  # type: ignore[attr-defined]
    assert set(rows) == {"alice", "bob"}
    assert rows["alice"]["gpu_hours"] > 0
    assert rows["alice"]["jobs"] == {"succeeded": 1}
    assert rows["alice"]["queue_waits"] == 1
    # bob's attempt failed with no checkpoint: all of its GPU time is lost.
    assert rows["bob"]["lost_gpu_hours"] == rows["bob"]["gpu_hours"] > 0
    assert admin["idle_gpu_hours"] is None

    alice = await report("alice")
    assert [r["group"] for r in alice["rows"]] == ["alice"]  # type: ignore[attr-defined]
    assert "bob" not in str(alice)
    by_label = await report("admin", group_by="label:team")
    assert sorted(r["group"] for r in by_label["rows"]) == ["(none)", "nlp"]  # type: ignore[attr-defined]
    today = datetime.now(UTC).date().isoformat()
    by_day = await report("bob", group_by="day")
    assert [r["group"] for r in by_day["rows"]] == [today]  # type: ignore[attr-defined]

    table = list(csv.DictReader(io.StringIO(usage_csv(admin))))
    assert [r["group"] for r in table] == ["alice", "bob"]
    assert table[0]["jobs_succeeded"] == "1"


async def test_bad_windows_and_groupings_are_422(keyed: tuple[Stack, dict[str, str]]) -> None:
    stack, keys = keyed
    headers = {"Authorization": keys["admin"]}
    now = datetime.now(UTC)
    for params in (
        {"group_by": "host"},
        {"from": now.isoformat(), "to": (now - timedelta(days=1)).isoformat()},
    ):
        response = await stack.client.get(PREFIX + "/usage", params=params, headers=headers)
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "validation_error"
