"""One set of progress fields: the wire types carry exactly the shared metrics."""

from __future__ import annotations

from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.job import Progress
from swift_trainer.core.progress import METRIC_FIELDS, TrainingMetrics
from swift_trainer.projections.read_models.views import ProgressView


def test_the_report_and_the_event_carry_exactly_the_metrics() -> None:
    report_only = {"job_id", "attempt", "runner_id"}
    event_only = {"at", "job_id", "attempt"}
    assert set(c.ReportProgress.__struct_fields__) - report_only == set(METRIC_FIELDS)
    assert set(e.JobProgressed.__struct_fields__) - event_only == set(METRIC_FIELDS)


def test_state_and_read_model_extend_the_metrics() -> None:
    assert issubclass(Progress, TrainingMetrics)
    assert issubclass(ProgressView, TrainingMetrics)
    assert set(Progress.__struct_fields__) - set(METRIC_FIELDS) == {"at"}
    assert set(ProgressView.__struct_fields__) - set(METRIC_FIELDS) == {"percent", "at"}
