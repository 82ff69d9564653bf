"""The handler's Prometheus series: latency by command and outcome, refusals, events by type."""

from __future__ import annotations

from nats.aio.client import Client
from prometheus_client import REGISTRY

from swift_trainer.bus.command_client import CommandClient
from swift_trainer.bus.command_handler import CommandHandler
from swift_trainer.bus.metrics import observe_command
from swift_trainer.core import commands as c
from swift_trainer.core.spec import JobSpec
from swift_trainer.core.sqlstore import SqlEventStore


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_handled_commands_are_timed_counted_and_refusals_coded(
    nc: Client, store: SqlEventStore
) -> None:
    handler = CommandHandler(store, observer=observe_command)
    await handler.start(nc)
    client = CommandClient(nc, timeout=5)
    ok = {"command": "SubmitJob", "outcome": "ok"}
    refused = {"command": "StartJob", "outcome": "refused"}
    duplicate = {"command": "SubmitJob", "outcome": "duplicate"}
    before_ok = _value("swift_trainer_command_duration_seconds_count", **ok)
    before_duplicate = _value("swift_trainer_command_duration_seconds_count", **duplicate)
    before_refused = _value("swift_trainer_command_duration_seconds_count", **refused)
    before_code = _value("swift_trainer_command_refusals_total", code="job_not_found")
    before_queued = _value("swift_trainer_events_appended_total", type="JobQueued")
    try:
        spec = JobSpec(data_path="d", model_path="m", output_dir="o/metrics")
        submit = c.SubmitJob(job_id="metrics", spec=spec)
        assert (await client.send(submit, command_id="first")).ok
        retry = await client.send(submit, command_id="first")  # the same command again
        assert retry.ok
        assert retry.duplicate
        missing = await client.send(c.StartJob(job_id="no-such-job"))
        assert missing.error is not None
        assert missing.error.code == "job_not_found"
    finally:
        await handler.stop()

    assert _value("swift_trainer_command_duration_seconds_count", **ok) == before_ok + 1
    assert (
        _value("swift_trainer_command_duration_seconds_count", **duplicate) == before_duplicate + 1
    )
    assert _value("swift_trainer_command_duration_seconds_count", **refused) == before_refused + 1
    assert _value("swift_trainer_command_refusals_total", code="job_not_found") == before_code + 1
    # The duplicate appended nothing: one JobQueued, not two.
    assert _value("swift_trainer_events_appended_total", type="JobQueued") == before_queued + 1
