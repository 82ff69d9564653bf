"""The training curve for charts: whole up to the cap, shape-keeping past it."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from swift_trainer.api.jobs.curve import MAX_CURVE_POINTS, downsample_curve, lttb
from swift_trainer.projections.read_models.views import MetricPoint

AT = datetime(2026, 12, 1, tzinfo=UTC)


def warmup_then_decay(steps: int, warmup: int) -> list[MetricPoint]:
    """A learning rate that rises to its peak at ``warmup``, then decays (cosine)."""
    points = []
    for step in range(1, steps + 1):
        if step <= warmup:
            rate = 1e-4 * step / warmup
        else:
            rate = 1e-4 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
        points.append(MetricPoint(step=step, at=AT, loss=2.0 / math.sqrt(step), learning_rate=rate))
    return points


def test_a_curve_under_the_cap_comes_back_whole() -> None:
    points = warmup_then_decay(200, 10)
    assert downsample_curve(points) == points


def test_a_long_curve_keeps_its_shape() -> None:
    points = warmup_then_decay(20_000, 1_000)
    kept = downsample_curve(points)
    assert len(kept) <= MAX_CURVE_POINTS + 2
    assert kept[0] == points[0] and kept[-1] == points[-1]
    peak = max(p.learning_rate or 0.0 for p in kept)
    assert peak >= 0.999e-4, "the warmup's peak survives"
    assert abs(max(kept, key=lambda p: p.learning_rate or 0.0).step - 1_000) <= 25


def test_a_lone_spike_survives() -> None:
    points = [MetricPoint(step=s, at=AT, loss=1.0) for s in range(1, 5001)]
    points[3210] = MetricPoint(step=3211, at=AT, loss=9.0)
    assert any(p.loss == 9.0 for p in downsample_curve(points))


@given(
    st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=300),
    st.integers(min_value=3, max_value=100),
)
def test_lttb_keeps_ordered_indices_with_both_ends(ys: list[float], threshold: int) -> None:
    xs = [float(i) for i in range(len(ys))]
    kept = lttb(xs, ys, threshold)
    assert kept == sorted(set(kept))
    assert len(kept) == min(len(ys), threshold)
    if ys:
        assert kept[0] == 0 and kept[-1] == len(ys) - 1
