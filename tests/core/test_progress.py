"""One set of progress fields: the wire types carry exactly the shared metrics."""

from __future__ import annotations

import msgspec

from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.job import Progress
from swift_trainer.core.progress import METRIC_FIELDS, MetricSample, TrainingMetrics
from swift_trainer.projections.read_models.views import ProgressView


def test_the_report_and_the_event_carry_exactly_the_metrics() -> None:
    report_only = {"job_id", "attempt", "runner_id", "earlier"}
    event_only = {"at", "job_id", "attempt", "earlier"}
    assert set(c.ReportProgress.__struct_fields__) - report_only == set(METRIC_FIELDS)
    assert set(e.JobProgressed.__struct_fields__) - event_only == set(METRIC_FIELDS)


def test_state_and_read_model_extend_the_metrics() -> None:
    assert issubclass(Progress, TrainingMetrics)
    assert issubclass(ProgressView, TrainingMetrics)
    assert set(Progress.__struct_fields__) - set(METRIC_FIELDS) == {"at"}
    assert set(ProgressView.__struct_fields__) - set(METRIC_FIELDS) == {"percent", "at"}


def test_an_event_written_before_samples_existed_still_decodes() -> None:
    old = (
        b'{"type":"JobProgressed","at":"2026-12-01T10:00:00Z","job_id":"j1","attempt":1,'
        b'"step":5,"loss":1.5}'
    )
    event = msgspec.json.decode(old, type=e.JobProgressed)
    assert event.earlier == ()
    assert event.loss == 1.5


def test_samples_survive_the_wire() -> None:
    samples = (MetricSample(step=5, loss=2.0), MetricSample(step=10, loss=1.8))
    report = c.ReportProgress(
        job_id="j1", attempt=1, runner_id="r1", step=15, loss=1.6, earlier=samples
    )
    decoded = msgspec.json.decode(msgspec.json.encode(report), type=c.ReportProgress)
    assert decoded.earlier == samples
