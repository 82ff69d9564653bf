"""The LOGS stream's per-job cap, enforced by a real nats-server."""

from __future__ import annotations

from nats.aio.client import Client

from swift_trainer.bus import subjects
from swift_trainer.bus.connection import LOG_MESSAGES_PER_JOB, ensure_stream, logs_stream_config
from swift_trainer.projections.read_models.views import Limits


async def test_provisioning_caps_each_jobs_share_of_the_stream(nc: Client) -> None:
    info = await nc.jetstream().stream_info(subjects.LOGS_STREAM)
    assert info.config.max_msgs_per_subject == LOG_MESSAGES_PER_JOB
    assert Limits().log_lines <= LOG_MESSAGES_PER_JOB, "a replay must refill the read model"


async def test_a_chatty_job_drops_its_own_oldest_lines_not_other_jobs(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_stream(js, logs_stream_config(per_job=10))
    await js.publish(subjects.log_subject("quiet"), b'{"line": "first"}')
    for i in range(25):
        await js.publish(subjects.log_subject("chatty"), f'{{"line": "{i}"}}'.encode())
    await js.publish(subjects.log_subject("quiet"), b'{"line": "second"}')
    info = await js.stream_info(subjects.LOGS_STREAM, subjects_filter=subjects.LOGS_ALL)
    assert info.state.subjects == {
        subjects.log_subject("chatty"): 10,
        subjects.log_subject("quiet"): 2,
    }
    newest = await js.get_last_msg(subjects.LOGS_STREAM, subjects.log_subject("chatty"))
    assert newest.data == b'{"line": "24"}'
