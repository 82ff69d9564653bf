"""What a trainer reports about its progress: one definition for every layer.

``ReportProgress`` (a runner's command) and ``JobProgressed`` (the stored event) carry these
same fields flat, as they always have on the wire, so old events keep decoding; a test pins
that their fields are exactly these. Everything else (the job's state, the runner's log
parser, the read model) uses this struct or extends it.
"""

from __future__ import annotations

import msgspec


class TrainingMetrics(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    step: int
    max_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    elapsed_s: float | None = None
    remaining_s: float | None = None
    memory_gib: float | None = None
    #: Iterations per second.
    train_speed: float | None = None
    eval_loss: float | None = None
    #: Input tokens trained on so far, where the trainer reports them (HF's
    #: ``num_input_tokens_seen``).
    tokens_seen: int | None = None


#: The field names, in order: what a report, an event and the state share.
METRIC_FIELDS: tuple[str, ...] = TrainingMetrics.__struct_fields__

#: The most logged steps one progress report carries besides its own.
MAX_EARLIER_SAMPLES = 1000


class MetricSample(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """One logged step's curve values, sent along with the next progress report.

    A runner reports progress at most every few seconds; the steps logged in between ride
    along as samples, so the job's curves keep every logged step.
    """

    step: int
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    eval_loss: float | None = None


def sample_of(metrics: TrainingMetrics) -> MetricSample:
    """The curve values of one progress record."""
    return MetricSample(
        step=metrics.step,
        epoch=metrics.epoch,
        loss=metrics.loss,
        learning_rate=metrics.learning_rate,
        grad_norm=metrics.grad_norm,
        eval_loss=metrics.eval_loss,
    )
