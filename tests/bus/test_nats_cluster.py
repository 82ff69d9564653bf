"""The service on a 3-node JetStream cluster: replicated streams, and commands and the relay
that keep working when the node a client is connected to is killed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from swift_trainer.bus import subjects
from swift_trainer.bus.command_client import CommandClient
from swift_trainer.bus.command_handler import CommandHandler
from swift_trainer.bus.connection import TRANSIENT_JETSTREAM_ERRORS, connect, provision
from swift_trainer.bus.nats_cluster import LocalNatsCluster
from swift_trainer.bus.relay import OutboxRelay, RelayNudge
from swift_trainer.core import commands as c
from swift_trainer.core.settings import SettingsError, load_settings
from swift_trainer.core.spec import JobSpec
from swift_trainer.core.sqlstore import SqlEventStore


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalNatsCluster]:
    nodes = LocalNatsCluster(tmp_path / "cluster")
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
async def cluster_nc(cluster: LocalNatsCluster) -> AsyncIterator[Client]:
    client = await connect(cluster.url, name="cluster-test")
    try:
        yield client
    finally:
        await client.close()


async def _provision(nc: Client) -> None:
    """Provisioning R3 streams needs the cluster's meta leader; it may still be electing."""
    for _ in range(100):
        try:
            await provision(nc.jetstream(), replicas=3)
            return
        except Exception:
            await asyncio.sleep(0.2)
    await provision(nc.jetstream(), replicas=3)


async def test_streams_are_replicated_and_commands_survive_the_loss_of_a_node(
    cluster: LocalNatsCluster, cluster_nc: Client, store: SqlEventStore
) -> None:
    await _provision(cluster_nc)
    js = cluster_nc.jetstream()
    for name in (subjects.EVENTS_STREAM, subjects.LOGS_STREAM):
        info = await js.stream_info(name)
        assert info.config.num_replicas == 3
        assert info.cluster is not None
        assert len(info.cluster.replicas or []) == 2, "a leader and two replicas"

    handler_nc = await connect(cluster.url, name="handler")
    relay = OutboxRelay(store, handler_nc)
    handler = CommandHandler(store, after_append=[relay.offer_appended, RelayNudge(handler_nc)])
    await handler.start(handler_nc)
    await relay.start()
    client = CommandClient(cluster_nc, timeout=5)
    spec = JobSpec(data_path="d", model_path="m", output_dir="o/a", auto_start=False)
    try:
        assert (await client.send(c.SubmitJob(job_id="a", spec=spec))).ok
        # Kill the node the handler is connected to (a crash: SIGKILL).
        connected = handler_nc.connected_url
        assert connected is not None
        victim = next(n for n in cluster.nodes if n.port == connected.port)
        cluster.kill_node(victim.index)
        for priority in range(1, 10):
            reply = await client.send(c.ChangePriority(job_id="a", priority=priority), timeout=10)
            assert reply.ok, reply.error
        assert handler_nc.connected_url is not None
        assert handler_nc.connected_url.port != victim.port, "moved to a surviving node"

        async def published() -> int:
            """Messages on EVENTS; -1 while the stream's new leader is being elected."""
            try:
                info = await js.stream_info(subjects.EVENTS_STREAM)
            except TRANSIENT_JETSTREAM_ERRORS:
                return -1
            return info.state.messages

        count = -1
        for _ in range(300):
            count = await published()
            if count == await store.last_position():
                break
            await asyncio.sleep(0.1)
        assert count == await store.last_position() == 11

        # The node comes back and catches up; the cluster keeps serving meanwhile.
        cluster.start_node(victim.index)
        assert (await client.send(c.StartJob(job_id="a"))).ok
    finally:
        await relay.stop()
        await handler.stop()
        await handler_nc.close()


def test_nats_stream_replicas_is_a_setting() -> None:
    assert load_settings({}).nats_stream_replicas == 1
    assert load_settings({"NATS_STREAM_REPLICAS": "3"}).nats_stream_replicas == 3
    with pytest.raises(SettingsError, match="NATS_STREAM_REPLICAS"):
        load_settings({"NATS_STREAM_REPLICAS": "7"})
    with pytest.raises(SettingsError, match="NATS_STREAM_REPLICAS"):
        load_settings({"NATS_STREAM_REPLICAS": "three"})
