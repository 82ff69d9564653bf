"""A job's training curve for charts: every logged step, thinned only past a cap.

A long run logs more steps than a chart can show. Largest-triangle-three-buckets (LTTB)
keeps the points that shape the line (peaks, valleys, the warmup's end) where a plain
stride would cut through them. Each plotted series is thinned on its own and the chosen
steps are kept for all of them, so the charts agree on the steps they show.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from ...projections.read_models.views import MetricPoint

#: The most points a curve answer holds; shorter curves come back whole.
MAX_CURVE_POINTS: Final = 1000

_SERIES: Final[tuple[Callable[[MetricPoint], float | None], ...]] = (
    lambda p: p.loss,
    lambda p: p.learning_rate,
    lambda p: p.grad_norm,
    lambda p: p.eval_loss,
)


def lttb(xs: Sequence[float], ys: Sequence[float], threshold: int) -> list[int]:
    """The indices LTTB keeps of the line ``(xs, ys)``: at most ``threshold``, first and
    last always, in order."""
    count = len(xs)
    if threshold >= count or count <= 2:
        return list(range(count))
    threshold = max(threshold, 3)
    kept = [0]
    bucket = (count - 2) / (threshold - 2)
    chosen = 0
    for index in range(threshold - 2):
        start = int(index * bucket) + 1
        end = int((index + 1) * bucket) + 1
        after_start, after_end = end, min(int((index + 2) * bucket) + 1, count)
        if after_start >= after_end:
            after_start, after_end = count - 1, count
        span = after_end - after_start
        mean_x = sum(xs[after_start:after_end]) / span
        mean_y = sum(ys[after_start:after_end]) / span
        ax, ay = xs[chosen], ys[chosen]
        best, best_area = start, -1.0
        for candidate in range(start, min(end, count - 1)):
            area = abs((ax - mean_x) * (ys[candidate] - ay) - (ax - xs[candidate]) * (mean_y - ay))
            if area > best_area:
                best, best_area = candidate, area
        kept.append(best)
        chosen = best
    kept.append(count - 1)
    return kept


def downsample_curve(
    points: Sequence[MetricPoint], limit: int = MAX_CURVE_POINTS
) -> list[MetricPoint]:
    """``points`` whole when at most ``limit``; else the steps LTTB keeps of each series."""
    if len(points) <= limit:
        return list(points)
    series = []
    for value_of in _SERIES:
        at = [i for i, p in enumerate(points) if value_of(p) is not None]
        if at:
            series.append((at, value_of))
    budget = max(limit // max(len(series), 1), 3)
    keep: set[int] = {0, len(points) - 1}
    for at, value_of in series:
        xs = [float(points[i].step) for i in at]
        ys = [float(value_of(points[i]) or 0.0) for i in at]
        keep.update(at[j] for j in lttb(xs, ys, budget))
    return [points[i] for i in sorted(keep)]
