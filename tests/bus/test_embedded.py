from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import psutil
import pytest

from swift_trainer.bus.connection import connect, provision
from swift_trainer.bus.embedded import EmbeddedNatsServer, NatsServerError


async def test_starts_with_jetstream_on_loopback_and_stops_cleanly(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path / "nats")
    await server.start()
    pid = server.pid
    assert pid is not None
    config = (tmp_path / "nats" / "nats-server.conf").read_text()
    assert "127.0.0.1" in config
    assert "sync_interval: 1s" in config
    nc = await connect(server.url)
    js = nc.jetstream()
    await provision(js)
    ack = await js.publish("st.events.job._.j1.JobSubmitted", b"{}")
    assert ack.seq == 1
    await nc.close()
    await server.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_a_killed_server_is_restarted_on_the_same_port_and_keeps_its_data(
    tmp_path: Path,
) -> None:
    server = EmbeddedNatsServer(tmp_path / "nats")
    await server.start()
    try:
        nc = await connect(server.url)
        js = nc.jetstream()
        await provision(js)
        await js.publish("st.events.job._.j1.JobSubmitted", b"{}")
        first_pid = server.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        for _ in range(200):
            await asyncio.sleep(0.05)
            if server.pid != first_pid and nc.is_connected:
                break
        assert server.pid != first_pid
        assert server.restarts == 1
        ack = await js.publish("st.events.job._.j1.JobQueued", b"{}")
        assert ack.seq == 2, "JetStream state survived the crash (fsync before ack)"
        await nc.close()
    finally:
        await server.stop()


async def test_a_port_in_use_is_reported_not_ignored(tmp_path: Path) -> None:
    first = EmbeddedNatsServer(tmp_path / "a")
    await first.start()
    try:
        second = EmbeddedNatsServer(tmp_path / "b", port=first.port)
        with pytest.raises(NatsServerError):
            await second.start(timeout=5)
    finally:
        await first.stop()


async def test_one_folder_takes_one_server(tmp_path: Path) -> None:
    first = EmbeddedNatsServer(tmp_path / "nats")
    await first.start()
    try:
        second = EmbeddedNatsServer(tmp_path / "nats")
        with pytest.raises(NatsServerError, match=f"in use by nats-server pid {first.pid}"):
            await second.start()
        assert second.pid is None
    finally:
        await first.stop()
    third = EmbeddedNatsServer(tmp_path / "nats")
    await third.start()
    await third.stop()
