"""The sweep driver's rules on a folded log: what it asks for, and median early stopping."""

from __future__ import annotations

from datetime import UTC, datetime

from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.spec import JobSpec
from swift_trainer.core.store import EventMetadata, RecordedEvent
from swift_trainer.core.sweep import SweepState, decide_sweep, evolve_sweep
from swift_trainer.core.sweep_space import EarlyStop, Parameter, SweepSpec
from swift_trainer.projections.experiments.sweep_driver import SweepDriver

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Log:
    """Feeds a driver as the log would: sweep events decided for real, job events given."""

    def __init__(self, spec: SweepSpec) -> None:
        self.driver = SweepDriver()
        self.state = SweepState(sweep_id="s")
        self.position = 0
        self.sweep(c.CreateSweep(sweep_id="s", spec=spec))

    def sweep(self, command: c.AnySweepCommand) -> None:
        for event in decide_sweep(self.state, command, T0):
            self.state = evolve_sweep(self.state, event)
            self.position += 1
            recorded = RecordedEvent(
                position=self.position,
                stream_id="sweep-s",
                version=self.state.version,
                event_id=f"e{self.position}",
                type=type(event).__name__,
                schema_version=1,
                payload=e.encode_event(event),
                metadata=EventMetadata(),
                recorded_at=T0,
            )
            assert self.driver.apply_recorded(recorded)

    def job(self, event: e.AnyEvent) -> None:
        self.driver.apply_job_event(event)

    def wanted(self) -> dict[str, c.AnyCommand]:
        return {a.command_id: a.command for a in self.driver.actions()}


def spec(n: int = 4, *, early_stop: EarlyStop | None = None) -> SweepSpec:
    return SweepSpec(
        name="lr",
        base=JobSpec(data_path="d", model_path="m", output_dir="o"),
        parameters={"train_args.learning_rate": Parameter(values=tuple(range(1, n + 1)))},
        max_parallel=n,
        early_stop=early_stop,
    )


def started(log: Log, n: int) -> None:
    for i in range(n):
        log.sweep(c.BeginTrial(sweep_id="s", index=i))
        log.job(e.JobSubmitted(at=T0, job_id=f"s-t{i}", spec=log.state.trials[i].spec))
        log.job(e.JobStarted(at=T0, job_id=f"s-t{i}", attempt=1, runner_id="r", pid=1, command=()))


def progress(log: Log, index: int, step: int, loss: float) -> None:
    log.job(e.JobProgressed(at=T0, job_id=f"s-t{index}", attempt=1, step=step, loss=loss))


def test_it_begins_then_submits_the_next_trial() -> None:
    log = Log(spec(2))
    assert list(log.wanted()) == ["begin-s-0"]
    log.sweep(c.BeginTrial(sweep_id="s", index=0))
    wanted = log.wanted()
    assert set(wanted) == {"trial-s-t0", "begin-s-1"}
    submit = wanted["trial-s-t0"]
    assert isinstance(submit, c.SubmitJob) and submit.spec.labels["sweep"] == "s"


def test_a_trial_worse_than_the_median_at_the_same_step_is_stopped() -> None:
    log = Log(spec(4, early_stop=EarlyStop(min_steps=20)))
    started(log, 4)
    for i, loss in enumerate([0.5, 0.6, 0.7, 2.0]):
        progress(log, i, 10, loss)
    assert not any(k.startswith("early-stop") for k in log.wanted())  # before min_steps
    for i, loss in enumerate([0.4, 0.5, 0.6, 1.5]):
        progress(log, i, 20, loss)
    stops = {k: v for k, v in log.wanted().items() if k.startswith("early-stop")}
    # Trial 3 (1.5 against a median of 0.5) and trial 2 (0.6 against 0.5) are worse.
    assert set(stops) == {"early-stop-s-t3", "early-stop-s-t2"}
    stop = stops["early-stop-s-t3"]
    assert isinstance(stop, c.StopJob) and stop.reason.startswith("early stop: loss 1.5 at step 20")
    # Its stop is recorded as an early stop, with the metric it had.
    log.job(e.JobStopped(at=T0, job_id="s-t3", reason=stop.reason, attempt=1))
    end = log.wanted()["end-s-3"]
    assert end == c.EndTrial(sweep_id="s", index=3, outcome="early_stopped", metric=1.5)


def test_a_trial_alone_at_its_step_is_never_stopped() -> None:
    log = Log(spec(2, early_stop=EarlyStop(min_steps=0)))
    started(log, 2)
    progress(log, 0, 10, 9.0)
    progress(log, 1, 15, 0.1)
    assert not any(k.startswith("early-stop") for k in log.wanted())


def test_a_stopped_sweep_stops_its_trials_and_ends_those_never_submitted() -> None:
    log = Log(spec(3))
    started(log, 1)
    log.sweep(c.BeginTrial(sweep_id="s", index=1))
    log.sweep(c.StopSweep(sweep_id="s", intent="cancel", reason="enough"))
    wanted = log.wanted()
    assert isinstance(wanted["sweep-cancel-s-t0"], c.CancelJob)
    assert wanted["end-s-1"] == c.EndTrial(sweep_id="s", index=1, outcome="cancelled")
    assert "begin-s-2" not in wanted and "trial-s-t1" not in wanted


def test_a_trial_whose_job_id_is_taken_ends_as_failed() -> None:
    log = Log(spec(2))
    log.sweep(c.BeginTrial(sweep_id="s", index=0))
    log.driver.refused("trial-s-t0", "invalid_spec")  # another refusal: tried again
    assert "trial-s-t0" in log.wanted()
    log.driver.refused("trial-s-t0", "job_already_exists")
    wanted = log.wanted()
    assert "trial-s-t0" not in wanted
    assert wanted["end-s-0"] == c.EndTrial(sweep_id="s", index=0, outcome="failed")
