"""``examples/subscriber.py``: completions and failures with their final loss, exactly once.

The events are the real thing: job histories made by the domain, appended to a SQL store
and published by the outbox relay to a real nats-server; the subscriber runs as its own
process, is stopped, misses events while down, and is pointed at a consumer that delivers
everything again (what JetStream does after a crash before the acks).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from tests.projections.read_models.history import History

from swift_trainer.bus.embedded import EmbeddedNatsServer
from swift_trainer.bus.relay import OutboxRelay
from swift_trainer.core.sqlstore import SqlEventStore
from swift_trainer.core.store import NewEvent

SUBSCRIBER = Path(__file__).resolve().parents[2] / "examples" / "subscriber.py"


class Jobs:
    """Job histories from the domain, appended to the store and published by the relay."""

    def __init__(self, store: SqlEventStore, nc: Client) -> None:
        self.history = History()
        self.store = store
        self.relay = OutboxRelay(store, nc)
        self._done = 0

    async def _publish(self) -> None:
        for recorded in self.history.records[self._done :]:
            new = NewEvent(recorded.event_id, recorded.type, recorded.payload)
            await self.store.append(recorded.stream_id, [new], expected_version=None)
        self._done = len(self.history.records)
        await self.relay.reconcile()
        await self.relay.publish_pending()

    async def train(self, job_id: str, losses: list[float], *, fail: bool = False) -> None:
        h = self.history
        h.submit(job_id)
        h.schedule(job_id)
        h.started(job_id)
        for step, loss in enumerate(losses, 1):
            h.progress(job_id, step, max_steps=len(losses) + 5, loss=loss)
        if fail:
            h.fail(job_id, reason="CUDA out of memory")
        else:
            h.succeed(job_id)
        await self._publish()


class Subscriber:
    def __init__(self, url: str, durable: str, state: Path) -> None:
        self.argv = [sys.executable, str(SUBSCRIBER), "--nats-url", url, "--durable", durable]
        self.argv += ["--state", str(state), "--json"]
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Subscriber:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        return self

    async def lines(self, count: int, *, quiet_s: float = 1.5) -> list[dict[str, Any]]:
        """Exactly ``count`` lines, then nothing more for ``quiet_s``."""
        assert self.process is not None and self.process.stdout is not None
        got = []
        for _ in range(count):
            raw = await asyncio.wait_for(self.process.stdout.readline(), timeout=20)
            assert raw, await self._stderr()
            got.append(json.loads(raw))
        try:
            extra = await asyncio.wait_for(self.process.stdout.readline(), timeout=quiet_s)
        except TimeoutError:
            extra = b""
        assert extra == b"", f"unexpected extra line: {extra!r}"
        return got

    async def _stderr(self) -> str:
        assert self.process is not None and self.process.stderr is not None
        if self.process.returncode is None:
            return "(still running)"
        return (await self.process.stderr.read()).decode()

    async def __aexit__(self, *_exc: object) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        assert self.process.returncode == 0, await self._stderr()


async def test_outcomes_once_each_across_restarts_and_redelivery(
    nats_server: EmbeddedNatsServer, nc: Client, store: SqlEventStore, tmp_path: Path
) -> None:
    jobs = Jobs(store, nc)
    state = tmp_path / "reports.state"
    await jobs.train("alpha", [2.0, 1.0, 0.5])
    await jobs.train("beta", [3.0, 1.25], fail=True)

    async with Subscriber(nats_server.url, "reports", state) as subscriber:
        first = await subscriber.lines(2)
    assert [(x["event"], x["job_id"], x["final_loss"]) for x in first] == [
        ("JobSucceeded", "alpha", 0.5),
        ("JobFailed", "beta", 1.25),
    ]
    assert first[1]["reason"] == "CUDA out of memory"

    # Published while the subscriber was down: delivered after the restart, nothing else.
    await jobs.train("gamma", [0.9, 0.25])
    async with Subscriber(nats_server.url, "reports", state) as subscriber:
        again = await subscriber.lines(1)
        assert [(x["job_id"], x["final_loss"]) for x in again] == [("gamma", 0.25)]
        await jobs.train("delta", [0.75])
        live = await subscriber.lines(1)
        assert [(x["job_id"], x["final_loss"]) for x in live] == [("delta", 0.75)]

    # Everything delivered again (a fresh consumer, as after a crash before the acks):
    # the state file keeps each one from being printed twice.
    async with Subscriber(nats_server.url, "reports-redelivered", state) as subscriber:
        await jobs.train("epsilon", [0.125])
        redelivered = await subscriber.lines(1)
        assert [x["job_id"] for x in redelivered] == ["epsilon"]
    info = await nc.jetstream().consumer_info("EVENTS", "reports-redelivered")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
