"""A real bus for the scheduler service tests: nats-server, SQLite store, handler, relay.

Each test gets its own nats-server (free port, temporary JetStream folder) provisioned with
a short scheduler lease, so takeovers happen within a few seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from swift_trainer.bus import subjects
from swift_trainer.bus.command_client import CommandClient
from swift_trainer.bus.command_handler import CommandHandler
from swift_trainer.bus.connection import connect, provision
from swift_trainer.bus.embedded import EmbeddedNatsServer
from swift_trainer.bus.messages import CommandReply
from swift_trainer.bus.relay import OutboxRelay, RelayNudge
from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.access import is_access_stream
from swift_trainer.core.invariants import gpu_double_bookings
from swift_trainer.core.inventory import (
    GpuHealth,
    GpuInfo,
    HostInfo,
    InventorySnapshot,
    RunnerHeartbeat,
)
from swift_trainer.core.job import JobState, evolve, initial_state
from swift_trainer.core.spec import JobSpec
from swift_trainer.core.sqlstore import SqlEventStore, open_event_store
from swift_trainer.core.store import RecordedEvent
from swift_trainer.core.sweep import is_sweep_stream
from swift_trainer.projections.read_models.views import QueueView
from swift_trainer.projections.scheduler.service import SchedulerOptions, SchedulerService

SCHEDULER_LEASE_S = 2.0
H100 = "NVIDIA H100 80GB HBM3"


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = 15.0,
    what: str = "condition",
) -> None:
    """Poll ``check`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def heartbeat(
    runner_id: str,
    gpus: int = 2,
    *,
    at: datetime | None = None,
    lease_s: float = 60.0,
    draining: bool = False,
    foreign: dict[int, int] | None = None,
    suspect: Iterable[int] = (),
    name: str = H100,
) -> RunnerHeartbeat:
    now = at or datetime.now(UTC)
    bad = set(suspect)
    return RunnerHeartbeat(
        runner_id=runner_id,
        at=now,
        lease_s=lease_s,
        inventory=InventorySnapshot(
            taken_at=now,
            source="simulated",
            host=HostInfo(
                hostname=runner_id,
                cpu_count=8,
                memory_total_bytes=64 << 30,
                memory_available_bytes=32 << 30,
                disk_path="/",
                disk_total_bytes=1 << 40,
                disk_free_bytes=1 << 39,
            ),
            gpus=tuple(
                GpuInfo(
                    index=i,
                    uuid=f"GPU-{runner_id}-{i}",
                    name=name,
                    memory_total_mib=81559,
                    memory_used_mib=0,
                    health=GpuHealth(ecc_volatile_uncorrected=1 if i in bad else None),
                )
                for i in range(gpus)
            ),
        ),
        foreign_memory_mib=foreign or {},
        draining=draining,
    )


def spec(job_id: str, *, priority: int = 5, gpu_count: int = 1, **more: object) -> JobSpec:
    return msgspec.convert(
        {
            "data_path": "d#100",
            "model_path": "m",
            "output_dir": f"out/{job_id}",
            "priority": priority,
            "gpu_count": gpu_count,
            **more,
        },
        JobSpec,
    )


class Bus:
    """The infrastructure one test runs against, with helpers to drive it."""

    def __init__(
        self, server: EmbeddedNatsServer, nc: Client, store: SqlEventStore, db: Path
    ) -> None:
        self.server = server
        self.nc = nc
        self.store = store
        self.db = db
        self.client = CommandClient(nc, timeout=10, actor="test")
        self.schedulers: list[SchedulerService] = []
        self.connections: list[Client] = []
        self.views: list[QueueView] = []

    @property
    def url(self) -> str:
        return self.server.url

    async def send(self, command: c.AnyCommand) -> CommandReply:
        return await self.client.send(command)

    async def submit(self, job_id: str, **options: object) -> CommandReply:
        reply = await self.send(c.SubmitJob(job_id=job_id, spec=spec(job_id, **options)))  # type: ignore[arg-type]
        assert reply.ok, reply
        return reply

    async def put_heartbeat(self, beat: RunnerHeartbeat) -> None:
        kv = await self.nc.jetstream().key_value(subjects.RUNNERS_BUCKET)
        await kv.put(beat.runner_id, msgspec.json.encode(beat))

    async def scheduler(
        self, cls: type[SchedulerService] = SchedulerService, **options: object
    ) -> SchedulerService:
        """A started scheduler on its own connection, as a separate process would have."""
        nc = await connect(self.url, name="scheduler-under-test")
        self.connections.append(nc)

        async def keep(view: QueueView) -> None:
            self.views.append(view)

        fields = set(SchedulerOptions.__struct_fields__)
        chosen = {"tick_s": 0.2, **{k: v for k, v in options.items() if k in fields}}
        settings: dict[str, object] = {"queue_view_sink": keep, "store": self.store}
        settings.update({k: v for k, v in options.items() if k not in fields})
        service = cls(nc, SchedulerOptions(**chosen), **settings)  # type: ignore[arg-type]
        await service.start()
        self.schedulers.append(service)
        return service

    async def events(self) -> list[RecordedEvent]:
        found: list[RecordedEvent] = []
        while True:
            batch = await self.store.read_all(
                after_position=found[-1].position if found else 0, limit=1000
            )
            if not batch:
                return found
            found.extend(batch)

    async def jobs(self) -> dict[str, JobState]:
        states: dict[str, JobState] = {}
        for recorded in await self.events():
            if is_access_stream(recorded.stream_id) or is_sweep_stream(recorded.stream_id):
                continue  # keys, quotas and sweeps: not job events
            event = e.decode_event(recorded.type, recorded.payload, recorded.schema_version)
            if isinstance(event, e.JobEvent):
                old = states.get(event.job_id) or initial_state(event.job_id)
                states[event.job_id] = evolve(old, event)
        return states

    async def status(self, job_id: str) -> str | None:
        state = (await self.jobs()).get(job_id)
        return None if state is None else state.status.value


async def assert_no_gpu_in_two_live_jobs(store_events: list[RecordedEvent]) -> int:
    """Replay the log and check, after every event, that live jobs hold disjoint GPUs.

    Returns how many schedulings the log holds, so a test can tell it checked something.
    """
    violations, scheduled = gpu_double_bookings(store_events)
    assert violations == [], violations
    return scheduled


async def stop_relay(relay: OutboxRelay) -> None:
    """``relay.stop()``, cancelling the relay's loop again if it swallowed the first cancel.

    Its loop waits with ``asyncio.wait_for``, which on Python 3.11 can eat a cancellation
    that arrives just as the wait ends; under load that hung the teardown now and then.
    """
    stopping = asyncio.ensure_future(relay.stop())
    while True:
        done, _ = await asyncio.wait({stopping}, timeout=2.0)
        if done:
            return
        task = relay._task  # the one handle on the loop that ignored us
        if task is not None:
            task.cancel()


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[Bus]:
    server = EmbeddedNatsServer(tmp_path / "nats")
    await server.start()
    nc = await connect(server.url, name="test")
    await provision(nc.jetstream(), scheduler_lease_s=SCHEDULER_LEASE_S, runner_lease_s=120.0)
    db = tmp_path / "events.db"
    store = open_event_store(f"sqlite+aiosqlite:///{db}")
    await store.setup()
    relay = OutboxRelay(store, nc)
    handler = CommandHandler(store, after_append=[relay.offer_appended, RelayNudge(nc)])
    await handler.start(nc)
    await relay.start()
    result = Bus(server, nc, store, db)
    try:
        yield result
    finally:
        for scheduler in result.schedulers:
            await scheduler.stop()
        for connection in result.connections:
            await connection.close()
        await stop_relay(relay)
        await handler.stop()
        await nc.close()
        await store.close()
        await server.stop()
