"""GPUs, system status and health."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from swift_trainer.core.inventory import RunnerHeartbeat
from swift_trainer.runner.gpu_probe import GpuInfo, HostInfo, InventorySnapshot

from .conftest import Stack, read_model_of, running_stack
from .test_jobs import problem


def heartbeat(gpus: int, *, name: str = "NVIDIA H100 80GB HBM3") -> bytes:
    snapshot = InventorySnapshot(
        taken_at=datetime.now(UTC),
        source="simulated",
        host=HostInfo(
            hostname="gpu-host",
            cpu_count=64,
            memory_total_bytes=1 << 40,
            memory_available_bytes=1 << 39,
            disk_path="/data",
            disk_total_bytes=1 << 42,
            disk_free_bytes=1 << 41,
        ),
        gpus=tuple(
            GpuInfo(
                index=i,
                uuid=f"GPU-{i}",
                name=name,
                memory_total_mib=81559,
                memory_used_mib=0,
            )
            for i in range(gpus)
        ),
        driver_version="570.0",
    )
    beat = RunnerHeartbeat(
        runner_id="runner",
        at=datetime.now(UTC),
        lease_s=30,
        inventory=snapshot,
        foreign_memory_mib={3: 512},
    )
    return msgspec.json.encode(beat)


async def test_gpus_pass_runner_inventories_through_and_mark_holders(stack: Stack) -> None:
    now = datetime.now(UTC)
    await stack.read_model.put_runner_snapshot("runner-1", heartbeat(4), now)
    await stack.read_model.put_runner_snapshot(
        "runner-old", heartbeat(2), now - timedelta(minutes=5)
    )
    await stack.read_model.put_runner_snapshot("runner-bad", b"\x00 not json", now)
    await stack.create(job_id="big", gpu_count=2)
    await stack.start("big", gpus=(1, 2))
    response = await stack.client.get(stack.url("/gpus"))
    assert response.status_code == 200
    body = response.json()
    runners = {runner["runner_id"]: runner for runner in body["runners"]}
    live = runners["runner-1"]
    assert live["alive"] is True
    assert [gpu["index"] for gpu in live["gpus"]] == [0, 1, 2, 3]
    assert [gpu["job_id"] for gpu in live["gpus"]] == [None, "big", "big", None]
    assert live["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert live["inventory"]["inventory"]["host"]["hostname"] == "gpu-host"
    assert live["inventory"]["inventory"]["driver_version"] == "570.0"
    assert "gpus" not in live["inventory"]["inventory"]
    assert [gpu["foreign_memory_mib"] for gpu in live["gpus"]] == [None, None, None, 512]
    assert runners["runner-old"]["alive"] is False
    assert runners["runner-bad"]["error"]
    assert runners["runner-bad"]["gpus"] == []
    assert (body["total"], body["assigned"], body["free"]) == (4, 2, 2)


async def test_system_status_reports_host_jobs_queue_and_gpus(stack: Stack) -> None:
    await stack.read_model.put_runner_snapshot("runner-1", heartbeat(2), datetime.now(UTC))
    await stack.create(job_id="q1")
    await stack.create(job_id="q2")
    await stack.create(job_id="r")
    await stack.start("r")
    body = (await stack.client.get(stack.url("/system/status"))).json()
    host = body["host"]
    assert host["cpu_count"] >= 1
    assert 0 <= host["memory_percent"] <= 100
    assert host["disk_total_bytes"] > 0
    assert body["jobs"]["queued"] == 2
    assert body["jobs"]["running"] == 1
    assert set(body["jobs"]) == {
        "held",
        "waiting",
        "queued",
        "scheduled",
        "running",
        "stopping",
        "succeeded",
        "failed",
        "stopped",
        "paused",
        "timed_out",
        "cancelled",
    }
    assert body["queue_length"] == 2
    assert (body["runners_known"], body["runners_alive"]) == (1, 1)
    assert (body["gpus_total"], body["gpus_free"]) == (2, 1)
    assert body["read_model_position"] == await stack.store.last_position()
    assert body["processor"]["state"] == "running"


async def test_health_is_liveness(memory_stack: Stack) -> None:
    response = await memory_stack.client.get(memory_stack.url("/health"))
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_checks_every_dependency(stack: Stack) -> None:
    response = await stack.client.get(stack.url("/health/ready"))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ready",
        "checks": {"nats": True, "event_store": True, "read_model": True},
    }


async def test_not_ready_is_a_503_with_the_failing_checks(tmp_path: Path) -> None:
    async def readiness() -> dict[str, bool | str]:
        return {"nats": True, "event_store": "connection refused", "redis": False}

    async with (
        read_model_of("memory") as model,
        running_stack(tmp_path, model, readiness=readiness) as (stack, _),
    ):
        response = await stack.client.get(stack.url("/health/ready"))
        body = problem(response, 503, "not_ready")
        assert response.headers["retry-after"] == "2"
        assert body["checks"] == {"nats": True, "event_store": "connection refused", "redis": False}
        assert "event_store: connection refused" in body["detail"]


async def test_a_hanging_readiness_check_times_out(tmp_path: Path) -> None:
    async def readiness() -> dict[str, bool | str]:
        await asyncio.sleep(30)
        return {}

    async with (
        read_model_of("memory") as model,
        running_stack(tmp_path, model, readiness=readiness, readiness_timeout_s=0.1) as (
            stack,
            _,
        ),
    ):
        body = problem(await stack.client.get(stack.url("/health/ready")), 503, "not_ready")
        assert "readiness" in body["checks"]


async def test_ready_reports_nats_down(memory_stack: Stack) -> None:
    await memory_stack.nc.close()
    body = problem(
        await memory_stack.client.get(memory_stack.url("/health/ready")), 503, "not_ready"
    )
    assert body["checks"]["nats"] == "not connected"
    assert body["checks"]["read_model"] is True
