"""The agent's parts on their own: report outbox, log publisher, message settling."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from tests.runner.agent_helpers import log_messages, make_agent
from tests.runner.runner_helpers import wait_for

from swift_trainer.bus.command_client import CommandUnavailable
from swift_trainer.bus.messages import CommandReply, EventEnvelope, ReplyError
from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.store import EventMetadata
from swift_trainer.runner.agent import merged_artifact_complete
from swift_trainer.runner.log_publisher import MAX_LINE_CHARS, LogPublisher, SeqClock
from swift_trainer.runner.outcome import ExportOutcome
from swift_trainer.runner.reporting import ReportOutbox, export_failure_reason

IDS = {"job_id": "j1", "attempt": 1, "runner_id": "r1"}


class FakeClient:
    """Answers like CommandClient; ``down`` makes it raise CommandUnavailable."""

    def __init__(self) -> None:
        self.down = False
        self.sent: list[tuple[str, c.AnyCommand]] = []
        self.tries: list[str] = []
        self.errors: dict[str, list[str]] = {}

    async def send(self, command: c.AnyCommand, *, command_id: str | None = None) -> CommandReply:
        assert command_id is not None
        self.tries.append(command_id)
        await asyncio.sleep(0)
        if self.down:
            raise CommandUnavailable("no handler")
        codes = self.errors.get(type(command).__name__)
        if codes:
            code = codes.pop(0)
            return CommandReply(command_id=command_id, ok=False, error=ReplyError(code, code))
        self.sent.append((command_id, command))
        return CommandReply(command_id=command_id, ok=True)


def outbox(client: FakeClient, path: Path, **kwargs: object) -> ReportOutbox:
    return ReportOutbox(client, path, retry_initial_s=0.01, retry_max_s=0.02, **kwargs)  # type: ignore[arg-type]


def stored(path: Path) -> list[Path]:
    return sorted(path.glob("*.json"))


def progress(step: int) -> c.ReportProgress:
    return c.ReportProgress(**IDS, step=step)  # type: ignore[arg-type]


async def test_outbox_keeps_order_and_coalesces_waiting_progress(tmp_path: Path) -> None:
    client = FakeClient()
    client.down = True
    box = outbox(client, tmp_path)
    started = box.submit(c.ReportStarted(**IDS, pid=1, command=("swift",)), command_id="s1")  # type: ignore[arg-type]
    for step in (1, 2):
        box.submit(progress(step))
    box.submit(c.ReportCheckpoint(**IDS, step=2, path="/o/checkpoint-2"))  # type: ignore[arg-type]
    box.submit(progress(3))
    box.submit(progress(4))
    await wait_for(lambda: client.tries.count(started) >= 3, timeout=5)
    assert box.pending("j1") == 3  # started (in flight), the checkpoint, the newest progress
    client.down = False
    assert await box.drain(timeout=5)
    sent = [command for _, command in client.sent]
    assert [type(x).__name__ for x in sent] == [
        "ReportStarted",
        "ReportCheckpoint",
        "ReportProgress",
    ]
    assert [x.step for x in sent if isinstance(x, c.ReportProgress)] == [4]
    assert set(client.tries[: client.tries.count(started)]) == {"s1"}  # retried with its id
    assert stored(tmp_path) == []  # delivered durable reports are forgotten


async def test_outbox_survives_a_restart_with_the_final_outcome(tmp_path: Path) -> None:
    client = FakeClient()
    client.down = True
    box = outbox(client, tmp_path)
    outcome_id = box.submit(
        c.ReportFailed(**IDS, exit_code=3, reason="boom"),  # type: ignore[arg-type]
    )
    box.submit(progress(9))  # progress is not worth a file
    await wait_for(lambda: len(client.tries) >= 2, timeout=5)
    await box.close()
    assert len(stored(tmp_path)) == 1

    fresh_client = FakeClient()
    fresh = outbox(fresh_client, tmp_path)
    assert fresh.load() == 1
    assert await fresh.drain(timeout=5)
    assert [(cid, type(cmd).__name__) for cid, cmd in fresh_client.sent] == [
        (outcome_id, "ReportFailed")
    ]
    assert stored(tmp_path) == []


async def test_outbox_hands_refusals_back_and_retries_transient_errors(tmp_path: Path) -> None:
    client = FakeClient()
    client.errors = {"ReportProgress": ["stale_assignment"], "ReportCheckpoint": ["store_error"]}
    refused: list[tuple[str, str]] = []

    async def on_refused(command: c.AnyJobCommand, error: ReplyError) -> None:
        refused.append((type(command).__name__, error.code))

    box = outbox(client, tmp_path, on_refused=on_refused)
    box.submit(progress(1))
    box.submit(c.ReportCheckpoint(**IDS, step=1, path="/o/checkpoint-1"))  # type: ignore[arg-type]
    assert await box.drain(timeout=5)
    assert refused == [("ReportProgress", "stale_assignment")]
    assert [type(cmd).__name__ for _, cmd in client.sent] == ["ReportCheckpoint"]
    assert box.refused == 1
    assert box.sent == 1


def test_an_unreadable_stored_report_is_dropped(tmp_path: Path) -> None:
    (tmp_path / "000000000001-x.json").write_text("{broken")
    assert outbox(FakeClient(), tmp_path).load() == 0
    assert list(tmp_path.iterdir()) == []


def test_seq_grows_per_job_even_when_the_clock_does_not() -> None:
    clock = SeqClock()
    assert clock.next("a", 1_000) == 1_000
    assert clock.next("a", 1_000) == 1_001
    assert clock.next("a", 900) == 1_002  # the clock went back
    assert clock.next("b", 5) == 5
    clock.seed("c", 10_000)
    assert clock.next("c", 2_000) == 10_001


async def test_log_lines_reach_the_logs_stream_and_a_restart_continues_above(nc: Client) -> None:
    first = LogPublisher(nc, "r1", flush_interval_s=0.01)
    first.start()
    for i in range(50):
        first.publish("job-logs", 1, "stdout" if i % 2 else "stderr", f"line {i}")
    first.publish("job-logs", 1, "stdout", "x" * (MAX_LINE_CHARS + 100))
    assert await first.flush()
    await first.stop()

    # A new runner process (or another host) whose clock lags far behind.
    second = LogPublisher(nc, "r2", flush_interval_s=0.01)
    second.clock.seed("other", 0)
    second.start()
    second.publish("job-logs", 2, "stdout", "attempt two")
    assert await second.flush()
    await second.stop()

    messages = await log_messages(nc, "job-logs")
    assert [m.line for m in messages[:3]] == ["line 0", "line 1", "line 2"]
    assert [m.stream for m in messages[:2]] == ["stderr", "stdout"]
    seqs = [m.seq for m in messages]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert seqs[-1] < 2**53
    long = messages[50]
    assert long.truncated
    assert len(long.line) == MAX_LINE_CHARS
    assert (messages[-1].attempt, messages[-1].runner_id, messages[-1].line) == (
        2,
        "r2",
        "attempt two",
    )
    raw = json.loads(
        (await nc.jetstream().get_last_msg("LOGS", "st.logs.job-logs")).data or b"{}",
    )
    assert set(raw) == {"job_id", "attempt", "seq", "stream", "line", "at", "runner_id"}


async def test_log_lines_wait_for_nats_and_are_not_lost(nc: Client) -> None:
    publisher = LogPublisher(nc, "r1", flush_interval_s=0.01, publish_timeout_s=0.5)
    await nc.jetstream().delete_stream("LOGS")  # publishes fail until the stream is back
    publisher.start()
    publisher.publish("job-wait", 1, "stdout", "kept")
    assert not await publisher.flush(timeout=0.5)
    from swift_trainer.bus.connection import ensure_stream, logs_stream_config

    await ensure_stream(nc.jetstream(), logs_stream_config())
    assert await publisher.flush(timeout=15)
    await publisher.stop()
    assert [m.line for m in await log_messages(nc, "job-wait")] == ["kept"]


def test_a_merged_model_needs_config_and_weights(tmp_path: Path) -> None:
    assert not merged_artifact_complete(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    assert not merged_artifact_complete(tmp_path)
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"")
    assert merged_artifact_complete(tmp_path)


def test_export_failure_reason_names_the_last_stderr_lines() -> None:
    outcome = ExportOutcome(
        status="failed",
        reason="swift export failed: it exited with code 1",
        exit_code=1,
        stderr_tail="Traceback\n  File x\nRuntimeError: merge failed\n",
    )
    reason = export_failure_reason(outcome)
    assert reason.endswith("RuntimeError: merge failed")
    assert len(export_failure_reason(outcome, limit=20)) == 20


class _UnsettledMsg:
    """A message whose ack, nak and term all fail, as they do while NATS reconnects."""

    subject = "st.events.job.r1.j1.StopRequested"
    headers: dict[str, str] | None = None

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls: list[str] = []

    async def ack(self) -> None:
        self.calls.append("ack")
        raise ConnectionError("connection closed")

    async def nak(self, delay: float | None = None) -> None:
        self.calls.append("nak")
        raise ConnectionError("connection closed")

    async def term(self) -> None:
        self.calls.append("term")
        raise ConnectionError("connection closed")


def _stop_envelope(runner_id: str) -> bytes:
    event = e.StopRequested(job_id="j1", at=datetime.now(UTC), reason="test", runner_id=runner_id)
    return msgspec.json.encode(
        EventEnvelope(
            position=1,
            stream_id="job-j1",
            version=1,
            event_id="ev-1",
            type=e.event_type(event),
            schema_version=1,
            recorded_at=datetime.now(UTC),
            metadata=EventMetadata(),
            event=msgspec.Raw(e.encode_event(event)),
        )
    )


async def test_failed_ack_nak_and_term_are_logged_not_swallowed(
    nc: Client,
    tmp_path: Path,
    sim_env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = make_agent(nc, tmp_path, sim_env)
    caplog.set_level(logging.WARNING, logger="swift_trainer.runner.agent")

    broken = _UnsettledMsg(b"{not json")
    await agent.handle_message(broken)  # type: ignore[arg-type]
    assert broken.calls == ["term"]
    assert "cannot term the message on st.events.job.r1.j1.StopRequested" in caplog.text
    assert "connection closed" in caplog.text

    ignored = _UnsettledMsg(_stop_envelope("another-runner"))
    await agent.handle_message(ignored)  # type: ignore[arg-type]
    assert ignored.calls == ["ack"]
    assert "cannot ack the message" in caplog.text

    async def failing(envelope: object, event: object) -> None:
        raise RuntimeError("handler bug")

    monkeypatch.setattr(agent, "dispatch", failing)
    failed = _UnsettledMsg(_stop_envelope("r1"))
    await agent.handle_message(failed)  # type: ignore[arg-type]
    assert failed.calls == ["nak"]
    assert "cannot nak the message" in caplog.text


class _RecordingSupervisor:
    """Records the stops asked of it, for a run it claims to hold."""

    def __init__(self) -> None:
        self.stops: list[tuple[str, float | None]] = []

    def request_stop(self, key: str, *, grace_period_s: float | None = None) -> bool:
        self.stops.append((key, grace_period_s))
        return True


@pytest.mark.parametrize(("grace_s", "used"), [(None, 15.0), (30.0, 30.0)])
async def test_a_stop_that_names_a_grace_kills_the_process_when_it_runs_out(
    nc: Client, tmp_path: Path, sim_env: dict[str, str], grace_s: float | None, used: float
) -> None:
    """A preemption's grace wins over the runner's own; a plain stop keeps the runner's."""
    agent = make_agent(nc, tmp_path, sim_env)
    recorder = _RecordingSupervisor()

    class Run:
        key, attempt = "job/j1", 1

    agent._running_job = lambda job_id: Run()  # type: ignore[assignment,method-assign,return-value]
    agent.supervisor = recorder  # type: ignore[assignment]
    event = e.StopRequested(
        job_id="j1",
        at=datetime.now(UTC),
        reason="preempted by urgent (priority 9 > 2) on host r1",
        runner_id="r1",
        attempt=1,
        intent="preempt",
        grace_s=grace_s,
    )
    agent._on_stop(event)
    assert recorder.stops == [("job/j1", used)]
