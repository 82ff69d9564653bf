"""``swift-trainer runner`` as a real process: killed mid-job and started again, the job goes on.

The training process runs in its own session, so SIGKILL to the runner leaves it running;
the restarted runner re-attaches through its state folder, and the job is reported started
once and succeeded once.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from tests.runner.agent_helpers import job_events, job_spec, submit_and_schedule, types, wait_event
from tests.runner.runner_helpers import alive, session_processes

from swift_trainer.bus import subjects
from swift_trainer.bus.command_client import CommandClient
from swift_trainer.bus.command_handler import CommandHandler
from swift_trainer.bus.embedded import EmbeddedNatsServer
from swift_trainer.core import events as e
from swift_trainer.core.inventory import decode_heartbeat
from swift_trainer.core.sqlstore import SqlEventStore


class RunnerProcess:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args = args
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "swift_trainer.cli", "runner", *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def runner(
    nats_server: EmbeddedNatsServer, tmp_path: Path, sim_env: dict[str, str]
) -> Iterator[RunnerProcess]:
    env = {k: v for k, v in sim_env.items() if not k.startswith(("NATS_", "EVENT_STORE"))}
    env.update(
        {
            "NATS_URL": nats_server.url,
            "EVENT_STORE_URL": f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}",
            "SWIFT_TRAINER_DATA_DIR": str(tmp_path / "data"),
        },
    )
    args = [
        "--runner-id",
        "rk",
        "--simulate-gpus",
        "1",
        "--simulate-step-seconds",
        "0.05",
        "--output-root",
        str(tmp_path / "out"),
        "--state-dir",
        str(tmp_path / "state"),
        "--heartbeat-s",
        "0.3",
        "--grace-period-s",
        "10",
    ]
    process = RunnerProcess(args, env, tmp_path / "runner.log")
    yield process
    if process.proc is not None and process.proc.poll() is None:
        process.proc.kill()
        process.proc.wait(10)


async def _wait_for_heartbeat(nc: Client, runner: RunnerProcess, after: float = 0.0) -> None:
    kv = await nc.jetstream().key_value(subjects.RUNNERS_BUCKET)
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        try:
            beat = decode_heartbeat((await kv.get("rk")).value or b"")
            if beat.at.timestamp() > after:
                return
        except Exception:  # not there yet
            pass
        assert runner.proc is not None
        assert runner.proc.poll() is None, runner.output()
        assert asyncio.get_running_loop().time() < deadline, runner.output()
        await asyncio.sleep(0.1)


async def test_a_runner_killed_mid_job_and_started_again_finishes_the_job(
    nc: Client,
    bus: CommandHandler,
    store: SqlEventStore,
    runner: RunnerProcess,
) -> None:
    client = CommandClient(nc, timeout=5.0, actor="test-scheduler")
    runner.start()
    await _wait_for_heartbeat(nc, runner)

    # save_total_limit keeps every checkpoint, so the ones written while the runner was
    # away are still there to be reported when it comes back.
    spec = job_spec("job-kill", max_steps=120, save_steps=20, save_total_limit=10)
    await submit_and_schedule(client, "job-kill", spec, runner_id="rk")
    started = (await wait_event(store, "job-kill", e.JobStarted, timeout=60))[0]
    await wait_event(store, "job-kill", e.CheckpointSaved, timeout=60)

    runner.kill()
    killed_at = asyncio.get_running_loop().time()
    assert alive(started.pid), "the training process must survive its runner"
    await asyncio.sleep(0.5)
    assert "JobSucceeded" not in types(await job_events(store, "job-kill"))

    runner.start()
    await _wait_for_heartbeat(nc, runner, after=killed_at)
    succeeded = (await wait_event(store, "job-kill", e.JobSucceeded, timeout=60))[0]
    assert succeeded.final_step == 120

    await asyncio.sleep(1.0)  # anything reported twice would have arrived by now
    events = await job_events(store, "job-kill")
    names = types(events)
    assert names.count("JobStarted") == 1
    assert names.count("JobSucceeded") == 1
    assert names[-1] == "JobSucceeded"
    steps = [x.step for x in events if isinstance(x, e.CheckpointSaved)]
    assert steps == [20, 40, 60, 80, 100, 120]
    assert session_processes(started.pid) == []

    assert runner.terminate() == 0, runner.output()
    assert "re-attached to job:job-kill" in runner.output()


async def test_the_runner_leaves_training_running_on_sigterm_and_reattaches(
    nc: Client,
    bus: CommandHandler,
    store: SqlEventStore,
    runner: RunnerProcess,
) -> None:
    client = CommandClient(nc, timeout=5.0, actor="test-scheduler")
    runner.start()
    await _wait_for_heartbeat(nc, runner)
    await submit_and_schedule(
        client, "job-term", job_spec("job-term", max_steps=100, save_steps=50), runner_id="rk"
    )
    started = (await wait_event(store, "job-term", e.JobStarted, timeout=60))[0]
    assert runner.terminate() == 0, runner.output()
    assert alive(started.pid)

    runner.start()
    await wait_event(store, "job-term", e.JobSucceeded, timeout=60)
    assert types(await job_events(store, "job-term")).count("JobStarted") == 1
