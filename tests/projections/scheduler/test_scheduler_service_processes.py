"""Two scheduler processes: SIGKILL the leader, the other takes over and places new work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import msgspec
from tests.projections.conftest import (
    SCHEDULER_LEASE_S,
    Bus,
    assert_no_gpu_in_two_live_jobs,
    eventually,
    heartbeat,
)

from swift_trainer.bus import subjects
from swift_trainer.projections.scheduler.leader_lease import LEADER_KEY, LeaseValue


def _scheduler(bus: Bus, scheduler_id: str, log: IO[bytes]) -> subprocess.Popen[bytes]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "EVENT_STORE", "REDIS"))
    }
    env["NATS_URL"] = bus.url
    env["EVENT_STORE_URL"] = f"sqlite+aiosqlite:///{bus.db}"
    env["LOG_LEVEL"] = "INFO"
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "swift_trainer.cli",
            "scheduler",
            "--scheduler-id",
            scheduler_id,
            "--lease-ttl",
            str(SCHEDULER_LEASE_S),
            "--tick",
            "0.2",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def _holder(bus: Bus) -> str | None:
    kv = await bus.nc.jetstream().key_value(subjects.SCHEDULER_LEASE_BUCKET)
    try:
        entry = await kv.get(LEADER_KEY)
    except Exception:
        return None
    return msgspec.json.decode(entry.value or b"", type=LeaseValue).holder


async def test_the_standby_process_takes_over_when_the_leader_is_killed(
    bus: Bus, tmp_path: Path
) -> None:
    await bus.put_heartbeat(heartbeat("r1", gpus=4))
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in ("s1", "s2")}
    procs = {name: _scheduler(bus, name, log) for name, log in logs.items()}
    try:

        async def someone_leads() -> bool:
            return await _holder(bus) in procs

        await eventually(someone_leads, timeout=60, what="a scheduler process to lead")
        leader = await _holder(bus)
        assert leader is not None
        standby = next(name for name in procs if name != leader)

        await bus.submit("before")

        async def placed(job_id: str) -> bool:
            return await bus.status(job_id) == "scheduled"

        await eventually(lambda: placed("before"), timeout=30, what="the leader to place a job")

        procs[leader].send_signal(signal.SIGKILL)
        procs[leader].wait(timeout=10)
        await bus.submit("after")

        async def standby_leads() -> bool:
            return await _holder(bus) == standby

        # Within about 1.2 lease TTLs on a quiet machine; here, only that it happens.
        await eventually(standby_leads, timeout=30, what="takeover")
        await eventually(lambda: placed("after"), timeout=30, what="the standby to place a job")

        procs[standby].send_signal(signal.SIGTERM)
        assert procs[standby].wait(timeout=30) == 0, "a scheduler exits 0 on SIGTERM"
        assert await _holder(bus) is None, "a clean stop gives the lease up"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs.values():
            log.close()
    output = {name: (tmp_path / f"{name}.log").read_text() for name in procs}
    assert "Traceback" not in output[standby], output[standby]
    events = await bus.events()
    assert await assert_no_gpu_in_two_live_jobs(events) == 2
    scheduled = {x.stream_id: x.metadata.actor for x in events if x.type == "JobScheduled"}
    assert scheduled == {"job-before": "scheduler", "job-after": "scheduler"}
