"""The shipped NATS permissions (deploy/nats/auth.conf), enforced by a real nats-server:
a runner's credentials may publish its reports but not a ``SubmitJob``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from tests.deploy.nats_auth import compose_passwords
from tests.deploy.nats_auth import nats_with_shipped_auth as shipped_auth

PASSWORDS = compose_passwords()


@pytest.fixture
def nats_with_shipped_auth(tmp_path: Path) -> Iterator[str]:
    with shipped_auth(tmp_path / "nats") as url:
        yield url


@contextlib.asynccontextmanager
async def connected(url: str, user: str, errors: list[str]) -> AsyncIterator[Client]:
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    deadline = asyncio.get_running_loop().time() + 15
    while True:
        try:
            nc = await nats.connect(
                url,
                user=user,
                password=PASSWORDS[f"NATS_{user.upper()}_PASSWORD"],
                error_cb=on_error,
                max_reconnect_attempts=0,
                connect_timeout=1,
            )
            break
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)
    try:
        yield nc
    finally:
        await nc.close()


async def test_a_runner_may_report_but_not_submit(nats_with_shipped_auth: str) -> None:
    url = nats_with_shipped_auth
    seen: list[str] = []
    runner_errors: list[str] = []
    async with (
        connected(url, "handler", []) as handler,
        connected(url, "runner", runner_errors) as runner,
    ):

        async def record(msg: nats.aio.msg.Msg) -> None:
            seen.append(msg.subject)

        await handler.subscribe("st.commands.>", cb=record)
        await handler.flush()
        await runner.publish("st.commands.SubmitJob", b"{}")
        await runner.publish("st.commands.ReportProgress", b"{}")
        await runner.publish("st.events.job._.x.JobSucceeded", b"{}")
        await runner.flush()
        deadline = asyncio.get_running_loop().time() + 30
        while "st.commands.ReportProgress" not in seen:
            assert asyncio.get_running_loop().time() < deadline, seen
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
    assert seen == ["st.commands.ReportProgress"]
    denied = " ".join(runner_errors).lower()
    assert "permissions violation" in denied
    assert "st.commands.submitjob" in denied
    assert "st.events.job._.x.jobsucceeded" in denied


async def test_the_api_may_submit_but_not_issue_keys_and_the_operator_may(
    nats_with_shipped_auth: str,
) -> None:
    url = nats_with_shipped_auth
    seen: list[str] = []
    api_errors: list[str] = []
    async with (
        connected(url, "handler", []) as handler,
        connected(url, "api", api_errors) as api,
        connected(url, "operator", []) as operator,
    ):

        async def record(msg: nats.aio.msg.Msg) -> None:
            seen.append(msg.subject)

        await handler.subscribe("st.commands.>", cb=record)
        await handler.flush()
        await api.publish("st.commands.IssueKey", b"{}")
        await api.publish("st.commands.SubmitJob", b"{}")
        await operator.publish("st.commands.IssueKey", b"{}")
        await api.flush()
        await operator.flush()
        # Generous: on a loaded machine a delivery can take seconds; a denied one never comes.
        deadline = asyncio.get_running_loop().time() + 30
        while len(seen) < 2:
            assert asyncio.get_running_loop().time() < deadline, seen
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
    assert sorted(seen) == ["st.commands.IssueKey", "st.commands.SubmitJob"]
    assert "st.commands.issuekey" in " ".join(api_errors).lower()
