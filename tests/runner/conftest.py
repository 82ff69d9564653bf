"""Fixtures of the runner tests (helpers live in ``runner_helpers``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from tests.runner.real_swift import real_agent, swift_venv, tiny  # noqa: F401 - fixtures

from swift_trainer.bus.command_handler import CommandHandler
from swift_trainer.bus.relay import OutboxRelay, RelayNudge
from swift_trainer.core.sqlstore import SqlEventStore

TEST_SESSION = uuid.uuid4().hex


@pytest.fixture
def sim_env(tmp_path: Path) -> dict[str, str]:
    """Environment for simulated runs: fast steps, no GPU variables leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFT_SIM_")}
    env.pop("NPROC_PER_NODE", None)
    env["SWIFT_SIM_STEP_SECONDS"] = "0.03"
    # marks the processes of this test session, for the stray-process check
    env["SWIFT_TRAINER_TEST_SESSION"] = TEST_SESSION
    return env


# --- a real bus for the agent tests: nats-server, SQLite store, command handler, relay ---------


@pytest.fixture
async def bus(nc: Client, store: SqlEventStore) -> AsyncIterator[CommandHandler]:
    """The command handler answering on ``nc`` and the relay publishing what it stores."""
    relay = OutboxRelay(store, nc, poll_interval=0.2)
    handler = CommandHandler(store, after_append=[relay.offer_appended, RelayNudge(nc)])
    await handler.start(nc)
    await relay.start()
    try:
        yield handler
    finally:
        await relay.stop()
        await handler.stop()
