"""Building the sweep answers from the folded sweep and the job read model."""

from __future__ import annotations

import csv
import io
from collections import Counter

from ...core.sweep import SweepState, best_trial
from ...projections.experiments.sweep_driver import SweepDriver
from ...projections.read_models.interface import ReadModel
from .schemas import SweepView, TrialView


def sweep_status(state: SweepState) -> str:
    if state.finished:
        return "finished"
    if state.stopped == "cancel":
        return "cancelling"
    if state.stopped is not None:
        return "stopping"
    return "running"


async def trial_views(
    driver: SweepDriver, state: SweepState, read_model: ReadModel
) -> list[TrialView]:
    """Every planned trial, with its job's status from the read model once submitted."""
    begun = [state.trials[i].job_id for i in sorted(state.begun)]
    summaries = dict(zip(begun, await read_model.get_jobs(begun), strict=True))
    views = []
    for index, plan in enumerate(state.trials):
        record = state.begun.get(index)
        trial = driver.trials.get(plan.job_id)
        summary = summaries.get(plan.job_id)
        status = summary.status.value if summary is not None else "pending"
        views.append(
            TrialView(
                index=index,
                job_id=plan.job_id,
                params=dict(plan.params),
                status=status,
                outcome=record.outcome if record is not None else None,
                metric=(record.metric if record and record.outcome else None)
                or (trial.metric if trial is not None else None),
                step=trial.step if trial is not None else None,
            )
        )
    return views


def sweep_view(state: SweepState, trials: list[TrialView], *, detailed: bool) -> SweepView:
    assert state.spec is not None
    spec = state.spec
    counts = Counter(t.status for t in trials)
    ended = sum(1 for r in state.begun.values() if r.outcome is not None)
    total = len(state.trials)
    best_index = state.best_index if state.finished else best_trial(state.begun, spec.goal)
    return SweepView(
        sweep_id=state.sweep_id,
        name=spec.name,
        status=sweep_status(state),
        method=spec.method,
        metric=spec.metric,
        goal=spec.goal,
        max_parallel=spec.max_parallel,
        trials_total=total,
        counts=dict(sorted(counts.items())),
        percent_done=round(100.0 * ended / total, 2) if total else 100.0,
        created_at=state.created_at,
        stop_reason=state.stop_reason,
        best=trials[best_index] if best_index is not None else None,
        trials=trials if detailed else None,
    )


def results_csv(trials: list[TrialView]) -> str:
    """One row per trial: index, job, status, outcome, metric, step, then each parameter."""
    names = sorted({name for t in trials for name in t.params})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["index", "job_id", "status", "outcome", "metric", "step", *names])
    for t in trials:
        writer.writerow(
            [
                t.index,
                t.job_id,
                t.status,
                t.outcome or "",
                "" if t.metric is None else t.metric,
                "" if t.step is None else t.step,
                *(t.params.get(name, "") for name in names),
            ]
        )
    return out.getvalue()
