"""Property-based tests of the Job aggregate: any command sequence keeps the state valid.

The strategies draw every command type in ``commands.AnyJobCommand``, with attempts, runner
ids, checkpoint paths and export ids that sometimes match the current state and sometimes
are stale or unknown, so both the accepting and the refusing branches of ``decide`` run.
A ``RuleBasedStateMachine`` then drives the aggregate against a small dict-based model of
the lifecycle (status, attempt, retries, runner, priority) and checks that they agree.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.errors import (
    DomainError,
    InvalidTransition,
    JobAlreadyExists,
    JobNotFound,
    StaleAssignment,
)
from swift_trainer.core.failure import FAILURE_KINDS, Failure
from swift_trainer.core.job import (
    ACTIVE,
    FINISHED,
    STATUS_AFTER,
    Checkpoint,
    JobState,
    JobStatus,
    decide,
    evolve,
    initial_state,
    replay,
)
from swift_trainer.core.spec import JobSpec, TrainArgs

JOB_ID = "job-1"
T0 = datetime(2025, 1, 1, tzinfo=UTC)
RUNNERS = ("runner-a", "runner-b")
CHECKPOINT_PATHS = (
    "out/job-1/v0/checkpoint-100",
    "out/job-1/v0/checkpoint-200",
    "out/job-1/v1/checkpoint-100",
)


# --- invariants -----------------------------------------------------------------------------


def check_invariants(state: JobState, applied: int) -> None:
    """What every reachable state satisfies, whatever the command history."""
    assert state.job_id == JOB_ID
    assert state.version == applied, "version counts the events applied"
    status = state.status
    if status in (JobStatus.NEW, JobStatus.DELETED):
        assert state.spec is None
        assert state.checkpoints == ()
        assert state.exports == ()
        assert state.runner_id is None
        assert state.gpu_ids == ()
        assert state.attempt == 0
        assert state.retries == 0
        return
    spec = state.spec
    assert spec is not None, "an existing job has a spec"
    assert 0 <= state.priority <= 10
    assert 0 <= state.retries <= spec.max_retries
    assert state.attempt >= 0
    if status in ACTIVE:
        assert state.runner_id is not None
        assert state.attempt >= 1
        assert len(state.gpu_ids) == spec.gpu_count
        assert len(set(state.gpu_ids)) == len(state.gpu_ids)
    else:
        assert state.runner_id is None
        assert state.gpu_ids == ()
    if status in (JobStatus.HELD, JobStatus.QUEUED):
        assert state.finished_at is None
    if status is JobStatus.HELD:
        assert state.attempt == 0
    if status is JobStatus.RUNNING:
        assert state.pid is not None
        assert state.last_runner_id == state.runner_id
    if status in FINISHED:
        assert state.finished_at is not None
    if status in (
        JobStatus.STOPPING,
        JobStatus.STOPPED,
        JobStatus.PAUSED,
        JobStatus.CANCELLED,
        JobStatus.TIMED_OUT,
    ):
        assert state.stop_reason is not None
    check_preemption_invariants(state)
    if status is not JobStatus.STOPPING:
        assert state.stop_intent == "stop", "an intent lives only as long as its stop"
    if status is JobStatus.FAILED:
        assert state.failure_reason is not None
    paths = [cp.path for cp in state.checkpoints]
    assert len(paths) == len(set(paths)), "checkpoints are unique by path"
    if state.checkpoints:
        assert state.last_runner_id is not None, "exports must know where checkpoints live"
    in_flight = [x for x in state.exports if x.status in ("requested", "running")]
    assert len(in_flight) <= 1, "at most one export in flight"
    export_ids = [x.export_id for x in state.exports]
    assert len(export_ids) == len(set(export_ids))
    for export in state.exports:
        # An export names a checkpoint the job saved (it may be gone from disk since).
        assert export.checkpoint in paths + [cp.path for cp in state.removed_checkpoints]
        assert export.status in ("requested", "running", "succeeded", "failed")
        assert (export.artifact_path is not None) == (export.status == "succeeded")


def check_preemption_invariants(state: JobState) -> None:
    """Preemptions and the runtime clock, whatever the command history."""
    assert state.spec is not None
    if state.preempted_by is not None:
        assert state.status is JobStatus.STOPPING and state.stop_intent == "preempt"
        assert state.spec.preemptible, "only a preemptible job is ever preempted"
    if not state.spec.preemptible:
        assert state.preemptions == 0
    assert len(state.preempted_at) <= state.preemptions
    assert state.runtime_s >= 0
    if state.run_since is not None:
        assert state.status in (JobStatus.RUNNING, JobStatus.STOPPING), (
            "a clock runs only in an attempt"
        )


# --- strategies -----------------------------------------------------------------------------
#
# Strategies are static (built once) and a command is *materialised* from the drawn choices
# and the current state; building a fresh strategy per step made the tests ten times slower.

train_args = st.builds(
    TrainArgs,
    train_type=st.sampled_from([None, None, "lora", "full"]),
    num_epochs=st.none() | st.floats(0.5, 5),
)
specs = st.builds(
    JobSpec,
    data_path=st.just("AI-ModelScope/coco#20000"),
    model_path=st.just("Qwen/Qwen2.5-VL-7B-Instruct"),
    output_dir=st.just("out/job-1"),
    priority=st.integers(0, 10),
    gpu_count=st.integers(1, 3),
    train_args=train_args,
    auto_start=st.booleans(),
    max_retries=st.integers(0, 3),
    auto_export=st.booleans(),
    preemptible=st.booleans(),
)
REASONS = ("because", "runner lease expired", "disk full", "")
COMMAND_TYPES: tuple[type[c.AnyJobCommand], ...] = c.AnyJobCommand.__args__
command_types = st.sampled_from(COMMAND_TYPES)


class Choices(NamedTuple):
    """Selectors a command is built from; ``0`` picks the value that fits the state."""

    attempt: int = 0
    runner: int = 0
    pick: int = 0
    number: int = 0
    flag: bool = False
    gpus: tuple[int, ...] = ()


any_choices = st.builds(
    Choices,
    st.integers(0, 7),
    st.integers(0, 4),
    st.integers(0, 9),
    st.integers(0, 1000),
    st.booleans(),
    st.lists(st.integers(0, 7), max_size=4).map(tuple),
)
fitting_choices = st.builds(
    Choices, st.just(0), st.just(0), st.integers(0, 5), st.integers(0, 1000), st.booleans()
)


def build_command(  # noqa: C901 - one branch per command type reads best as a table
    state: JobState, kind: type[c.AnyJobCommand], spec: JobSpec | None, ch: Choices
) -> c.AnyJobCommand:
    """A command of ``kind`` whose attempt, runner, checkpoint and export id fit only if
    the selectors say so: stale attempts, foreign runners and unknown ids are all drawn."""
    job, cur = JOB_ID, state.attempt
    attempt = (cur, cur, cur, cur, cur + 1, max(cur - 1, 0), cur, 0)[ch.attempt]
    owner = state.runner_id or state.last_runner_id or RUNNERS[0]
    runner = (owner, owner, owner, *RUNNERS)[ch.runner]
    reason = REASONS[ch.pick % len(REASONS)]
    known_exports = [x.export_id for x in state.exports]
    export_id = [*known_exports, *known_exports, f"{job}-export-99"][
        ch.pick % (2 * len(known_exports) + 1)
    ]
    export = next((x for x in state.exports if x.export_id == export_id), None)
    export_runner = export.runner_id if export is not None and ch.runner == 0 else runner
    if kind is c.SubmitJob:
        assert spec is not None
        return c.SubmitJob(job_id=job, spec=spec)
    if kind is c.StartJob:
        return c.StartJob(job_id=job)
    if kind is c.StopJob:
        return c.StopJob(job_id=job, reason=reason)
    if kind is c.PauseJob:
        return c.PauseJob(job_id=job, reason=reason)
    if kind is c.ResumeJob:
        return c.ResumeJob(job_id=job)
    if kind is c.CancelJob:
        return c.CancelJob(job_id=job, reason=reason)
    if kind is c.ChangePriority:
        return c.ChangePriority(job_id=job, priority=ch.number % 13 - 1)  # -1..11: some bad
    if kind is c.RequestExport:
        paths = [cp.path for cp in state.checkpoints]
        names = [p.rsplit("/", 1)[-1] for p in paths]
        options = [None, None, *paths, *names, "checkpoint-999"]
        return c.RequestExport(
            job_id=job, checkpoint=options[ch.pick % len(options)], overwrite=ch.flag
        )
    if kind is c.DeleteJob:
        return c.DeleteJob(job_id=job)
    if kind is c.ReleaseWaitingJob:
        return c.ReleaseWaitingJob(job_id=job)
    if kind is c.ScheduleJob:
        count = state.spec.gpu_count if state.spec is not None else 1
        first = ch.pick % 3
        gpus = tuple(range(first, first + count)) if ch.pick < 7 else ch.gpus
        return c.ScheduleJob(
            job_id=job,
            attempt=(cur + 1, cur + 1, cur + 1, cur + 1, cur + 1, cur, cur + 2, 0)[ch.attempt],
            runner_id=RUNNERS[(cur + ch.runner) % 2],
            gpu_ids=gpus,
        )
    if kind is c.MarkLost:
        return c.MarkLost(job_id=job, attempt=attempt, reason=reason)
    if kind is c.PreemptJob:
        return c.PreemptJob(
            job_id=job,
            attempt=attempt,
            preempted_by="urgent",
            reason=reason or "preempted",
            grace_s=1 + ch.number % 120,
            reserved_gpu_ids=ch.gpus,
        )
    if kind is c.TimeOutJob:
        return c.TimeOutJob(job_id=job, attempt=attempt, reason=reason or "max_runtime")
    if kind is c.ReportStarted:
        return c.ReportStarted(
            job_id=job, attempt=attempt, runner_id=runner, pid=ch.number + 1, command=("swift",)
        )
    if kind is c.RejectAssignment:
        return c.RejectAssignment(job_id=job, attempt=attempt, runner_id=runner, reason=reason)
    if kind is c.ReportProgress:
        return c.ReportProgress(
            job_id=job,
            attempt=attempt,
            runner_id=runner,
            step=ch.number,
            max_steps=1000 if ch.flag else None,
            loss=ch.number / 7 if ch.flag else None,
            epoch=ch.number / 1000,
        )
    if kind is c.ReportCheckpoint:
        return c.ReportCheckpoint(
            job_id=job,
            attempt=attempt,
            runner_id=runner,
            step=ch.number,
            path=CHECKPOINT_PATHS[ch.pick % len(CHECKPOINT_PATHS)],
        )
    if kind is c.RequeueJob:
        return c.RequeueJob(job_id=job, reason=reason)
    if kind is c.FlagJob:
        warning = "idle" if ch.flag else "resume_stalled"
        return c.FlagJob(job_id=job, attempt=attempt, warning=warning, reason=reason)
    if kind is c.ReportCheckpointsRemoved:
        return c.ReportCheckpointsRemoved(
            job_id=job,
            attempt=attempt,
            runner_id=runner,
            paths=(CHECKPOINT_PATHS[ch.pick % len(CHECKPOINT_PATHS)],),
        )
    if kind is c.ReportSucceeded:
        return c.ReportSucceeded(
            job_id=job, attempt=attempt, runner_id=runner, final_step=ch.number
        )
    if kind is c.ReportFailed:
        return c.ReportFailed(
            job_id=job,
            attempt=attempt,
            runner_id=runner,
            exit_code=None if ch.flag else ch.number % 256,
            reason=reason,
            failure=None if ch.flag else Failure(kind=FAILURE_KINDS[ch.pick % len(FAILURE_KINDS)]),
        )
    if kind is c.ReportStopped:
        checkpoint = None if ch.flag else CHECKPOINT_PATHS[ch.pick % len(CHECKPOINT_PATHS)]
        return c.ReportStopped(job_id=job, attempt=attempt, runner_id=runner, checkpoint=checkpoint)
    if kind is c.ReportRendezvous:
        return c.ReportRendezvous(
            job_id=job,
            attempt=attempt,
            runner_id=runner,
            master_addr="10.0.0.1",
            master_port=1 + ch.number % 65535,
        )
    if kind is c.ReportExportStarted:
        return c.ReportExportStarted(
            job_id=job, export_id=export_id, runner_id=export_runner, pid=ch.number + 1
        )
    if kind is c.ReportExportSucceeded:
        return c.ReportExportSucceeded(
            job_id=job,
            export_id=export_id,
            runner_id=export_runner,
            artifact_path=f"out/job-1/merged-{ch.number}",
        )
    if kind is c.ReportExportFailed:
        return c.ReportExportFailed(
            job_id=job, export_id=export_id, runner_id=export_runner, exit_code=1, reason=reason
        )
    raise AssertionError(f"no strategy for {kind.__name__}: add one")


def draw_command(
    data: st.DataObject,
    state: JobState,
    kinds: st.SearchStrategy[type[c.AnyJobCommand]] = command_types,
    choices: st.SearchStrategy[Choices] = any_choices,
) -> c.AnyJobCommand:
    kind = data.draw(kinds)
    spec = data.draw(specs) if kind is c.SubmitJob else None
    return build_command(state, kind, spec, data.draw(choices))


def test_strategies_cover_every_command_type() -> None:
    """Every command type in AnyJobCommand can be built, so every branch of decide runs."""
    state = initial_state(JOB_ID)
    spec = JobSpec(data_path="d", model_path="m", output_dir="o")
    built = {type(build_command(state, kind, spec, Choices())) for kind in COMMAND_TYPES}
    assert built == set(c.AnyJobCommand.__args__)
    assert len(COMMAND_TYPES) == 28


# --- the properties -------------------------------------------------------------------------


class Trace:
    """Drive the aggregate with drawn commands, checking the properties at every step."""

    def __init__(self) -> None:
        self.state = initial_state(JOB_ID)
        self.events: list[e.AnyJobEvent] = []
        self.accepted = 0
        self.refused = 0

    def apply(self, command: c.AnyJobCommand, now: datetime) -> None:
        before = copy.deepcopy(self.state)
        refusal: DomainError | None = None
        try:
            new_events = decide(self.state, command, now)
        except DomainError as exc:  # (e) anything else escapes and fails the test
            refusal, new_events = exc, []
        if refusal is not None:
            # (b) a refusal records nothing and leaves the state exactly as it was, and
            # its message names the job so that a user knows what it is about.
            assert self.state == before
            assert JOB_ID in refusal.message
            self.refused += 1
            return
        self.accepted += 1
        assert self.state == before, "decide is pure"
        for event in new_events:
            assert event.job_id == JOB_ID
            assert event.at == now
            # (d) every emitted event round-trips through the wire format unchanged.
            decoded = e.decode_event(e.event_type(event), e.encode_event(event))
            assert decoded == event
            assert type(decoded) is type(event)
            status_before = self.state.status
            self.state = evolve(self.state, event)
            # (e) the status an event sets is the one the domain's table names, so a reply's
            # event types tell its status.
            expected = STATUS_AFTER.get(e.event_type(event), status_before)
            assert self.state.status == expected, e.event_type(event)
            self.events.append(event)
        # (a) whatever happened, the state is valid.
        check_invariants(self.state, len(self.events))


PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # The explain phase traces every line; on Python 3.11 that makes a failure take minutes.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
)


@PROPERTY_SETTINGS
@given(data=st.data(), steps=st.integers(1, 40))
def test_any_command_sequence_keeps_the_job_valid(data: st.DataObject, steps: int) -> None:
    trace = Trace()
    for step in range(steps):
        command = draw_command(data, trace.state)
        trace.apply(command, T0 + timedelta(seconds=step))
    # (c) the history alone reproduces the state exactly.
    assert replay(JOB_ID, trace.events) == trace.state
    assert trace.accepted + trace.refused == steps


#: The commands that move a job on from each status, weighted by repetition: walks that
#: mostly follow them reach the deep states (exports, resumes, exhausted retries).
_FINISHED_STEPS: list[type[c.AnyJobCommand]] = [
    c.RequestExport,
    c.RequestExport,
    c.RequestExport,
    c.ReportExportStarted,
    c.ReportExportSucceeded,
    c.ReportExportSucceeded,
    c.ReportExportFailed,
    c.StartJob,
    c.DeleteJob,
    c.ReportCheckpoint,
    c.CancelJob,
]
_NEXT_STEPS: dict[JobStatus, list[type[c.AnyJobCommand]]] = {
    JobStatus.NEW: [c.SubmitJob],
    JobStatus.DELETED: [c.SubmitJob],
    JobStatus.HELD: [c.StartJob, c.StartJob, c.ChangePriority, c.StopJob, c.DeleteJob],
    JobStatus.QUEUED: [
        *(c.ScheduleJob, c.ScheduleJob, c.ScheduleJob, c.ScheduleJob),
        *(c.ChangePriority, c.StopJob, c.StartJob, c.PauseJob, c.CancelJob),
    ],
    JobStatus.SCHEDULED: [
        *(c.ReportStarted, c.ReportStarted, c.ReportStarted, c.ReportStarted),
        *(c.RejectAssignment, c.MarkLost, c.StopJob, c.ReportFailed),
    ],
    JobStatus.RUNNING: [
        *(c.ReportCheckpoint, c.ReportCheckpoint, c.ReportCheckpoint, c.ReportProgress),
        c.ReportCheckpointsRemoved,
        c.RequeueJob,
        c.FlagJob,
        *(c.ReportSucceeded, c.ReportFailed, c.MarkLost, c.StopJob, c.PauseJob, c.CancelJob),
        *(c.PreemptJob, c.PreemptJob, c.TimeOutJob),
    ],
    JobStatus.STOPPING: [
        *(c.ReportStopped, c.ReportStopped, c.ReportCheckpoint, c.MarkLost, c.CancelJob),
        *(c.StopJob, c.ReportFailed, c.TimeOutJob),
    ],
    JobStatus.SUCCEEDED: _FINISHED_STEPS,
    JobStatus.FAILED: _FINISHED_STEPS,
    JobStatus.STOPPED: _FINISHED_STEPS,
    JobStatus.PAUSED: [c.ResumeJob, c.ResumeJob, *_FINISHED_STEPS],
    JobStatus.CANCELLED: _FINISHED_STEPS,
    JobStatus.TIMED_OUT: [c.StartJob, c.ResumeJob, *_FINISHED_STEPS],
}
NEXT_STEPS = {status: st.sampled_from(kinds) for status, kinds in _NEXT_STEPS.items()}
#: One draw in five is any command with any selectors: stale reports, unknown ids.
off_path = st.integers(0, 4).map(lambda n: n == 0)


def draw_lifecycle_command(data: st.DataObject, state: JobState) -> c.AnyJobCommand:
    if data.draw(off_path):
        return draw_command(data, state)
    return draw_command(data, state, NEXT_STEPS[state.status], fitting_choices)


@PROPERTY_SETTINGS
@given(data=st.data(), first=specs, steps=st.integers(5, 50))
def test_mostly_fitting_sequences_keep_the_job_valid(
    data: st.DataObject, first: JobSpec, steps: int
) -> None:
    """Commands that mostly fit reach the deep states: exports, resumes, exhausted retries."""
    trace = Trace()
    trace.apply(c.SubmitJob(job_id=JOB_ID, spec=first), T0)
    for step in range(1, steps):
        command = draw_lifecycle_command(data, trace.state)
        trace.apply(command, T0 + timedelta(seconds=step))
    assert replay(JOB_ID, trace.events) == trace.state
    assert trace.accepted > 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_prefix_of_the_history_replays_to_the_state_at_that_time(
    data: st.DataObject,
) -> None:
    trace = Trace()
    snapshots = {0: trace.state}
    for step in range(25):
        command = draw_lifecycle_command(data, trace.state)
        trace.apply(command, T0 + timedelta(seconds=step))
        snapshots[trace.state.version] = trace.state
    for version, snapshot in snapshots.items():
        assert replay(JOB_ID, trace.events[:version]) == snapshot


# --- a stateful test against a model of the lifecycle ---------------------------------------

Model = dict[str, Any]


#: For each runner report: the statuses that accept it, and where it moves the job.
REPORT_RULES: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "started": (("scheduled", "running", "stopping"), {"scheduled": "running"}),
    "succeeded": (
        ("running", "stopping", "succeeded"),
        {"running": "succeeded", "stopping": "succeeded"},
    ),
    "failed": (
        ("scheduled", "running", "stopping", "failed"),
        {"scheduled": "failed", "running": "failed", "stopping": "failed"},
    ),
    "stopped": (
        ("scheduled", "running", "stopping", "stopped"),
        {"scheduled": "stopped", "running": "stopped", "stopping": "stopped"},
    ),
}


def _exists(machine: JobLifecycle) -> bool:
    return machine.model["status"] not in ("new", "deleted")


def _status_in(*statuses: str) -> Callable[[JobLifecycle], bool]:
    return lambda machine: machine.model["status"] in statuses


class JobLifecycle(RuleBasedStateMachine):
    """Drive the aggregate and a dict-based model side by side; they must agree.

    Rules are gated by preconditions so that walks go deep (a job runs, is lost, retried,
    stopped, resumed, deleted and submitted again) instead of hammering a missing job;
    refusals are still exercised, each with the error the model predicts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.state = initial_state(JOB_ID)
        self.events: list[e.AnyJobEvent] = []
        self.clock = T0
        self.model: Model = self._fresh_model("new")

    @staticmethod
    def _fresh_model(status: str) -> Model:
        return {
            "status": status,
            "attempt": 0,
            "retries": 0,
            "runner": None,
            "priority": 0,
            "max_retries": 0,
            "gpu_count": 1,
        }

    # -- the harness ---------------------------------------------------------------------

    def _send(self, command: c.AnyJobCommand, expected: type[DomainError] | None) -> None:
        """Run ``command``; the model says whether it must be refused, and with what."""
        self.clock += timedelta(seconds=1)
        before = self.state
        if expected is not None:
            with pytest.raises(DomainError) as info:
                decide(self.state, command, self.clock)
            assert type(info.value) is expected, f"{command!r} refused with {info.value!r}"
            assert self.state == before
            return
        for event in decide(self.state, command, self.clock):
            self.state = evolve(self.state, event)
            self.events.append(event)

    def _report_error(self, attempt: int, runner: str) -> type[DomainError] | None:
        """Attempt fencing, which every runner report goes through first: a queued job has
        no live attempt, so any report about it comes from a runner that must stop."""
        m = self.model
        if (
            attempt != m["attempt"]
            or m["status"] == "queued"
            or (m["runner"] is not None and runner != m["runner"])
        ):
            return StaleAssignment
        return None

    def _requeue_or_fail(self) -> None:
        m = self.model
        m["runner"] = None
        if m["retries"] + 1 > m["max_retries"]:
            m["status"] = "failed"
        else:
            m["retries"] += 1
            m["status"] = "queued"

    def _pick_runner(self, which: int) -> str:
        """``0`` and ``1``: the job's runner (when it has one); ``2``: another runner."""
        runner = self.model["runner"]
        if runner is not None and which < 2:
            return str(runner)
        return RUNNERS[which % 2]

    # -- users -----------------------------------------------------------------------------

    @initialize(spec=specs)
    def submit_first(self, spec: JobSpec) -> None:
        self.submit(spec)

    @precondition(lambda self: not _exists(self))
    @rule(spec=specs)
    def submit(self, spec: JobSpec) -> None:
        self._send(c.SubmitJob(job_id=JOB_ID, spec=spec), None)
        self.model = self._fresh_model("queued" if spec.auto_start else "held")
        self.model.update(
            priority=spec.priority, max_retries=spec.max_retries, gpu_count=spec.gpu_count
        )

    @precondition(_exists)
    @rule(spec=specs)
    def submit_again(self, spec: JobSpec) -> None:
        self._send(c.SubmitJob(job_id=JOB_ID, spec=spec), JobAlreadyExists)

    @precondition(lambda self: not _exists(self))
    @rule(
        command=st.sampled_from(
            [
                c.StartJob(job_id=JOB_ID),
                c.StopJob(job_id=JOB_ID),
                c.DeleteJob(job_id=JOB_ID),
                c.RequestExport(job_id=JOB_ID),
                c.MarkLost(job_id=JOB_ID, attempt=0),
                c.ReportStarted(job_id=JOB_ID, attempt=0, runner_id="r", pid=1, command=()),
            ]
        )
    )
    def command_on_missing_job(self, command: c.AnyJobCommand) -> None:
        self._send(command, JobNotFound)

    @precondition(_exists)
    @rule()
    def start(self) -> None:
        m = self.model
        if m["status"] in ("succeeded", "stopping"):
            self._send(c.StartJob(job_id=JOB_ID), InvalidTransition)
            return
        self._send(c.StartJob(job_id=JOB_ID), None)
        if m["status"] in ("stopped", "failed"):
            m["retries"] = 0
        if m["status"] in ("held", "stopped", "failed"):
            m["status"] = "queued"

    @precondition(_exists)
    @rule()
    def stop(self) -> None:
        m = self.model
        if m["status"] in ("succeeded", "failed", "stopped"):
            self._send(c.StopJob(job_id=JOB_ID), InvalidTransition)
            return
        self._send(c.StopJob(job_id=JOB_ID), None)
        if m["status"] in ("held", "queued"):
            m["status"] = "stopped"
        elif m["status"] in ("scheduled", "running"):
            m["status"] = "stopping"

    @precondition(_exists)
    @rule(priority=st.integers(0, 10))
    def change_priority(self, priority: int) -> None:
        m = self.model
        command = c.ChangePriority(job_id=JOB_ID, priority=priority)
        if m["status"] not in ("held", "queued"):
            self._send(command, InvalidTransition)
        else:
            self._send(command, None)
            m["priority"] = priority

    @precondition(_exists)
    @rule()
    def delete(self) -> None:
        if self.model["status"] in ("scheduled", "running", "stopping"):
            self._send(c.DeleteJob(job_id=JOB_ID), InvalidTransition)
        else:
            self._send(c.DeleteJob(job_id=JOB_ID), None)
            self.model = self._fresh_model("deleted")

    # -- the scheduler ---------------------------------------------------------------------

    @precondition(_status_in("queued"))
    @rule(attempt_offset=st.sampled_from([1, 1, 1, 1, 0, 2]), which=st.integers(0, 1))
    def schedule(self, attempt_offset: int, which: int) -> None:
        m = self.model
        attempt = m["attempt"] + attempt_offset
        command = c.ScheduleJob(
            job_id=JOB_ID,
            attempt=attempt,
            runner_id=RUNNERS[which],
            gpu_ids=tuple(range(m["gpu_count"])),
        )
        if attempt_offset != 1:
            self._send(command, StaleAssignment)
        else:
            self._send(command, None)
            m.update(status="scheduled", attempt=attempt, runner=RUNNERS[which])

    @precondition(_status_in("queued"))
    @rule(extra=st.sampled_from([-1, 1]))
    def schedule_on_the_wrong_number_of_gpus(self, extra: int) -> None:
        command = c.ScheduleJob(
            job_id=JOB_ID,
            attempt=self.model["attempt"] + 1,
            runner_id=RUNNERS[0],
            gpu_ids=tuple(range(self.model["gpu_count"] + extra)),
        )
        self._send(command, InvalidTransition)

    @precondition(lambda self: _exists(self) and self.model["status"] != "queued")
    @rule()
    def schedule_out_of_turn(self) -> None:
        command = c.ScheduleJob(
            job_id=JOB_ID,
            attempt=self.model["attempt"] + 1,
            runner_id=RUNNERS[0],
            gpu_ids=tuple(range(self.model["gpu_count"])),
        )
        self._send(command, InvalidTransition)

    @precondition(_exists)
    @rule(attempt_offset=st.sampled_from([0, 0, 0, 0, -1, 1]))
    def mark_lost(self, attempt_offset: int) -> None:
        m = self.model
        self._send(c.MarkLost(job_id=JOB_ID, attempt=m["attempt"] + attempt_offset), None)
        if m["status"] in ("scheduled", "running", "stopping") and attempt_offset == 0:
            if m["status"] == "stopping":
                m.update(status="stopped", runner=None)
            else:
                self._requeue_or_fail()

    # -- runners ---------------------------------------------------------------------------

    @precondition(_status_in("scheduled"))
    @rule(attempt_offset=st.sampled_from([0, 0, 0, 0, -1]), which=st.integers(0, 2))
    def reject_assignment(self, attempt_offset: int, which: int) -> None:
        m = self.model
        attempt, runner = m["attempt"] + attempt_offset, self._pick_runner(which)
        command = c.RejectAssignment(
            job_id=JOB_ID, attempt=attempt, runner_id=runner, reason="gpu busy"
        )
        if (error := self._report_error(attempt, runner)) is not None:
            self._send(command, error)
        else:
            self._send(command, None)
            self._requeue_or_fail()

    @precondition(lambda self: _exists(self) and self.model["status"] != "scheduled")
    @rule()
    def reject_a_started_assignment(self) -> None:
        m = self.model
        command = c.RejectAssignment(
            job_id=JOB_ID, attempt=m["attempt"], runner_id=self._pick_runner(0), reason="late"
        )
        self._send(command, InvalidTransition)

    def _report(self, kind: str, attempt_offset: int, which: int) -> None:
        """Send a runner report of ``kind``; the model decides whether it fits."""
        m = self.model
        attempt, runner = m["attempt"] + attempt_offset, self._pick_runner(which)
        job = JOB_ID
        command: c.ReportStarted | c.ReportSucceeded | c.ReportFailed | c.ReportStopped
        if kind == "started":
            command = c.ReportStarted(
                job_id=job, attempt=attempt, runner_id=runner, pid=4242, command=("swift",)
            )
        elif kind == "succeeded":
            command = c.ReportSucceeded(job_id=job, attempt=attempt, runner_id=runner)
        elif kind == "failed":
            command = c.ReportFailed(
                job_id=job, attempt=attempt, runner_id=runner, exit_code=1, reason="oom"
            )
        else:
            command = c.ReportStopped(job_id=job, attempt=attempt, runner_id=runner)
        accepted_in, moves_to = REPORT_RULES[kind]
        error = self._report_error(attempt, runner)
        if error is None and m["status"] not in accepted_in:
            error = InvalidTransition
        self._send(command, error)
        if error is None and m["status"] in moves_to:
            m["status"] = moves_to[m["status"]]
            if m["status"] != "running":
                m["runner"] = None

    @precondition(_status_in("scheduled", "running", "stopping"))
    @rule(attempt_offset=st.sampled_from([0, 0, 0, 0, -1, 1]), which=st.integers(0, 2))
    def report_started(self, attempt_offset: int, which: int) -> None:
        self._report("started", attempt_offset, which)

    @precondition(_status_in("running", "stopping", "succeeded"))
    @rule(attempt_offset=st.sampled_from([0, 0, 0, 0, -1]), which=st.integers(0, 2))
    def report_succeeded(self, attempt_offset: int, which: int) -> None:
        self._report("succeeded", attempt_offset, which)

    @precondition(_status_in("scheduled", "running", "stopping", "failed"))
    @rule(attempt_offset=st.sampled_from([0, 0, 0, 0, -1]), which=st.integers(0, 2))
    def report_failed(self, attempt_offset: int, which: int) -> None:
        self._report("failed", attempt_offset, which)

    @precondition(_status_in("scheduled", "running", "stopping", "stopped"))
    @rule(attempt_offset=st.sampled_from([0, 0, 0, 0, -1]), which=st.integers(0, 2))
    def report_stopped(self, attempt_offset: int, which: int) -> None:
        self._report("stopped", attempt_offset, which)

    @precondition(_exists)
    @rule(
        kind=st.sampled_from(["started", "succeeded", "failed", "stopped"]),
        attempt_offset=st.sampled_from([0, 0, -1, 1]),
        which=st.integers(0, 2),
    )
    def report_whenever(self, kind: str, attempt_offset: int, which: int) -> None:
        """Reports that arrive in any status: late, duplicated, or from a stale attempt."""
        self._report(kind, attempt_offset, which)

    @rule(choice=st.integers(0, 4), spec=specs)
    def advance(self, choice: int, spec: JobSpec) -> None:
        """The command that moves the job on from where it is, so walks go deep."""
        status = self.model["status"]
        moves: dict[str, list[Callable[[], None]]] = {
            "new": [lambda: self.submit(spec)],
            "deleted": [lambda: self.submit(spec)],
            "held": [self.start],
            "queued": [lambda: self.schedule(1, choice % 2)],
            "scheduled": [
                lambda: self.report_started(0, 0),
                lambda: self.report_started(0, 0),
                lambda: self.reject_assignment(0, 0),
            ],
            "running": [
                lambda: self._report("succeeded", 0, 0),
                lambda: self._report("failed", 0, 0),
                lambda: self.mark_lost(0),
                lambda: self.mark_lost(0),
                self.stop,
            ],
            "stopping": [lambda: self.report_stopped(0, 0), lambda: self.mark_lost(0)],
            "succeeded": [self.delete],
            "failed": [self.start, self.start, self.delete],
            "stopped": [self.start, self.start, self.delete],
        }
        options = moves[status]
        options[choice % len(options)]()

    # -- agreement -------------------------------------------------------------------------

    @invariant()
    def aggregate_agrees_with_the_model(self) -> None:
        m, s = self.model, self.state
        assert s.status == m["status"]
        assert s.attempt == m["attempt"]
        assert s.retries == m["retries"]
        assert s.runner_id == m["runner"]
        if _exists(self):
            assert s.priority == m["priority"]
        check_invariants(s, len(self.events))

    @invariant()
    def history_replays_to_the_state(self) -> None:
        assert replay(JOB_ID, self.events) == self.state


JobLifecycle.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
)
TestJobLifecycle = JobLifecycle.TestCase


# --- the harness itself can fail ------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"status": JobStatus.RUNNING},  # active without a runner or GPUs
        {"version": 99},
        {"retries": 9},
        {"gpu_ids": (0,)},  # GPUs held by a queued job
        {"checkpoints": (Checkpoint(1, "a", 1), Checkpoint(2, "a", 1))},
    ],
)
def test_check_invariants_catches_broken_states(changes: dict[str, Any]) -> None:
    state = initial_state(JOB_ID)
    spec = JobSpec(data_path="d", model_path="m", output_dir="out/job-1", max_retries=1)
    for event in decide(state, c.SubmitJob(job_id=JOB_ID, spec=spec), T0):
        state = evolve(state, event)
    check_invariants(state, 2)
    with pytest.raises(AssertionError):
        check_invariants(msgspec.structs.replace(state, **changes), 2)
