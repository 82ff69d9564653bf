"""Driving sweeps: the event-derived state of each sweep and its trial jobs, and the
commands it calls for (begin the next trial, submit it, record its end, stop poor trials,
stop every trial of a stopped sweep).

Every command carries an id derived from what it is for (``begin-<sweep>-<index>``,
``trial-<job>``, ...), so sending it again after a restart is answered, not repeated.
``max_parallel`` is kept by the sweep aggregate itself: a trial begins only while fewer
are under way, and a trial is under way from its begin until its end is recorded.
"""

from __future__ import annotations

import msgspec

from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.errors import MessageError
from swift_trainer.core.store import RecordedEvent
from swift_trainer.core.sweep import (
    SweepState,
    TrialPlan,
    decode_sweep_event,
    evolve_sweep,
    is_sweep_stream,
    median_says_stop,
)

#: A stop's reason starts with this when the median rule stopped the trial.
EARLY_STOP_REASON: str = "early stop"


class TrialJob(msgspec.Struct):
    """What the driver knows of one trial's job."""

    sweep_id: str
    index: int
    submitted: bool = False
    outcome: c.TrialOutcome | None = None
    status: str = "pending"
    step: int | None = None
    metric: float | None = None
    #: Step -> the sweep's metric at that step.
    history: dict[int, float] = {}


class Action(msgspec.Struct, frozen=True):
    command: c.AnyCommand
    command_id: str


_ENDED_STATUS: dict[str, c.TrialOutcome] = {
    "JobSucceeded": "succeeded",
    "JobFailed": "failed",
    "JobCancelled": "cancelled",
    "JobStopped": "stopped",
    "JobPaused": "stopped",
    "JobDeleted": "cancelled",
}
_STATUS_AFTER = {
    "JobQueued": "queued",
    "JobRequeued": "queued",
    "JobWaiting": "waiting",
    "JobHeld": "held",
    "JobScheduled": "scheduled",
    "JobStarted": "running",
    "StopRequested": "stopping",
}


class SweepDriver:
    """The sweeps and their trial jobs, folded from the log; see the module docstring."""

    def __init__(self) -> None:
        self.sweeps: dict[str, SweepState] = {}
        self.trials: dict[str, TrialJob] = {}

    def apply_recorded(self, recorded: RecordedEvent) -> bool:
        """Fold a stored event of a sweep stream; False for any other stream."""
        if not is_sweep_stream(recorded.stream_id):
            return False
        try:
            event = decode_sweep_event(recorded.type, recorded.payload)
        except MessageError:
            return True
        sweep_id = event.sweep_id
        state = self.sweeps.get(sweep_id) or SweepState(sweep_id=sweep_id)
        state = evolve_sweep(state, event)
        self.sweeps[sweep_id] = state
        if isinstance(event, c.SweepCommand):  # pragma: no cover - events only
            return True
        for index, plan in enumerate(getattr(event, "trials", ())):
            assert isinstance(plan, TrialPlan)
            self.trials.setdefault(plan.job_id, TrialJob(sweep_id=sweep_id, index=index))
        return True

    def apply_job_event(self, event: e.AnyEvent) -> None:
        """Fold a job event of a trial (other jobs are ignored)."""
        if not isinstance(event, e.JobEvent):
            return
        trial = self.trials.get(event.job_id)
        if trial is None:
            return
        name = type(event).__name__
        if isinstance(event, e.JobSubmitted):
            trial.submitted = True
            trial.status = "submitted"
        elif isinstance(event, e.JobProgressed):
            value = self._metric_of(trial.sweep_id, event)
            trial.step = event.step
            if value is not None:
                trial.metric = value
                trial.history[event.step] = value
        elif name in _ENDED_STATUS:
            if isinstance(event, e.JobSucceeded):
                self._eval_metric(trial, event)
            outcome: c.TrialOutcome = _ENDED_STATUS[name]
            reason = getattr(event, "reason", "")
            if outcome == "stopped" and str(reason).startswith(EARLY_STOP_REASON):
                outcome = "early_stopped"
            trial.outcome = outcome
            trial.status = _ENDED_STATUS[name]
        elif name in _STATUS_AFTER:
            trial.status = _STATUS_AFTER[name]
            if name in ("JobQueued", "JobRequeued"):
                trial.outcome = None

    def _metric_of(self, sweep_id: str, event: e.JobProgressed) -> float | None:
        state = self.sweeps.get(sweep_id)
        if state is None or state.spec is None or state.spec.metric.startswith("eval:"):
            return None
        return event.eval_loss if state.spec.metric == "eval_loss" else event.loss

    def _eval_metric(self, trial: TrialJob, event: e.JobSucceeded) -> None:
        """An ``eval:<dataset>`` metric is the score of the evaluation after training."""
        state = self.sweeps.get(trial.sweep_id)
        if state is None or state.spec is None or not state.spec.metric.startswith("eval:"):
            return
        trial.metric = event.eval_results.get(state.spec.metric.removeprefix("eval:"))

    def refused(self, command_id: str, code: str) -> None:
        """A trial whose job id another job holds cannot run: it ends as failed.

        Any other refusal changes nothing here: the state that follows decides the next try.
        """
        if code != "job_already_exists" or not command_id.startswith("trial-"):
            return
        trial = self.trials.get(command_id.removeprefix("trial-"))
        if trial is not None and not trial.submitted:
            trial.submitted = True
            trial.outcome = "failed"

    def actions(self) -> list[Action]:
        found: list[Action] = []
        for state in self.sweeps.values():
            if state.spec is not None and not state.finished:
                found.extend(self._sweep_actions(state))
        return found

    def _sweep_actions(self, state: SweepState) -> list[Action]:
        assert state.spec is not None
        sid, found = state.sweep_id, []
        for index, record in state.begun.items():
            plan = state.trials[index]
            trial = self.trials[plan.job_id]
            if record.outcome is not None:
                continue
            if trial.outcome is not None:
                found.append(
                    Action(
                        c.EndTrial(
                            sweep_id=sid, index=index, outcome=trial.outcome, metric=trial.metric
                        ),
                        f"end-{sid}-{index}",
                    )
                )
            elif not trial.submitted:
                if state.stopped is not None:
                    found.append(
                        Action(
                            c.EndTrial(sweep_id=sid, index=index, outcome="cancelled"),
                            f"end-{sid}-{index}",
                        )
                    )
                else:
                    found.append(
                        Action(
                            c.SubmitJob(job_id=plan.job_id, spec=plan.spec), f"trial-{plan.job_id}"
                        )
                    )
            elif state.stopped is not None:
                found.append(stop_action(sid, plan.job_id, state.stopped, state.stop_reason))
            elif (stop := self._early_stop(state, index)) is not None:
                found.append(stop)
        upcoming = state.next_index
        if upcoming is not None and state.under_way < state.spec.max_parallel:
            found.append(
                Action(c.BeginTrial(sweep_id=sid, index=upcoming), f"begin-{sid}-{upcoming}")
            )
        return found

    def _early_stop(self, state: SweepState, index: int) -> Action | None:
        rule = state.spec.early_stop if state.spec is not None else None
        if rule is None or state.spec is None:
            return None
        plan = state.trials[index]
        trial = self.trials[plan.job_id]
        if trial.step is None or trial.step < rule.min_steps or trial.step not in trial.history:
            return None
        own = trial.history[trial.step]
        others = [
            other.history[trial.step]
            for other_plan in state.trials
            if other_plan.job_id != plan.job_id
            and trial.step in (other := self.trials[other_plan.job_id]).history
        ]
        if not median_says_stop(own, others, state.spec.goal):
            return None
        reason = (
            f"{EARLY_STOP_REASON}: {state.spec.metric} {own:.4g} at step {trial.step} is worse "
            f"than the median of the other trials"
        )
        return Action(c.StopJob(job_id=plan.job_id, reason=reason), f"early-stop-{plan.job_id}")


def stop_action(sweep_id: str, job_id: str, intent: str, reason: str | None) -> Action:
    """The stop or cancel of one trial of a stopped sweep (the API sends the same)."""
    why = f"sweep {sweep_id}: {reason or 'stopped'}"
    if intent == "cancel":
        return Action(c.CancelJob(job_id=job_id, reason=why), f"sweep-cancel-{job_id}")
    return Action(c.StopJob(job_id=job_id, reason=why), f"sweep-stop-{job_id}")
