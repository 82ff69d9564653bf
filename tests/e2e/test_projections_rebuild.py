"""``swift-trainer projections rebuild`` reproduces exactly what the live projection built."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import redis
from tests.conftest import service_unavailable
from tests.e2e.live_service import Service, start_service, stop_service

from swift_trainer.projections.read_models.redis import RedisReadModel
from swift_trainer.projections.read_models.views import ReadModelSnapshot

REDIS_URL = os.environ.get("SWIFT_TRAINER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def _snapshot(prefix: str) -> ReadModelSnapshot:
    read_model = RedisReadModel.from_url(REDIS_URL, prefix=prefix)
    try:
        return await read_model.snapshot()
    finally:
        await read_model.close()


def _wipe(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
    finally:
        client.close()


def test_rebuild_from_the_event_store_equals_the_live_read_models(tmp_path: Path) -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        service_unavailable("Redis", exc)
    prefix = f"test-rebuild-{uuid.uuid4().hex[:8]}:"
    redis_env = {"REDIS_URL": REDIS_URL, "REDIS_PREFIX": prefix}
    try:
        process, base = start_service(
            tmp_path,
            "--simulate-step-seconds",
            "0.02",
            env_extra=redis_env,
        )
        service = Service(process, base, tmp_path / "outputs")
        try:
            http = service.http
            service.wait_for("a runner", lambda: http.get("/gpus").json()["total"] == 2)
            for job_id, steps in (("quick", 10), ("long", 100_000)):
                body = {"job_id": job_id, "data_path": "d#10", "model_path": "m"}
                body["train_args"] = {"max_steps": steps, "save_steps": 5}
                assert http.post("/jobs", json=body).status_code == 201
            service.wait_status("quick", "succeeded")
            service.wait_status("long", "running")
            assert http.post("/jobs/long/stop").status_code == 200
            service.wait_status("long", "stopped")
            held = {"job_id": "held", "data_path": "d", "model_path": "m", "auto_start": False}
            assert http.post("/jobs", json=held).status_code == 201
            assert http.patch("/jobs/held/priority", json={"priority": 9}).status_code == 200
            assert http.delete("/jobs/quick").status_code == 204
            service.http.close()
        finally:
            stderr = stop_service(process)
        assert process.returncode == 0, stderr[-3000:]

        live = asyncio.run(_snapshot(prefix))
        assert live.applied_position > 0
        assert set(live.jobs) == {"long", "held"}

        env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "EVENT_STORE"))}
        env.update(redis_env, SWIFT_TRAINER_DATA_DIR=str(tmp_path))
        rebuilt_run = subprocess.run(
            [sys.executable, "-m", "swift_trainer.cli", "projections", "rebuild"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert rebuilt_run.returncode == 0, rebuilt_run.stderr[-3000:]
        assert '"rebuilt": true' in rebuilt_run.stdout
        rebuilt = asyncio.run(_snapshot(prefix))
        assert rebuilt == live
    finally:
        _wipe(prefix)


def test_rebuild_without_redis_explains_itself(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS", "NATS_"))}
    env["SWIFT_TRAINER_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "swift_trainer.cli", "projections", "rebuild"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "no Redis configured" in result.stderr
