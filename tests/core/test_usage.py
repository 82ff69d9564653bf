"""GPU-hours from the event log: the fold against a brute-force replay, step by step.

The brute force knows nothing of attempts records: at every 5-minute step of the window it
replays each job's events up to that instant and asks whether it runs, on how many GPUs,
and (looking at the attempt's end) whether that step's work is lost. Events fall on
5-minute marks, so the steps are exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from swift_trainer.core import events as e
from swift_trainer.core.spec import JobSpec
from swift_trainer.core.usage import (
    NO_LABEL,
    NO_OWNER,
    UsageLedger,
    check_group_by,
    day_spans,
    gpu_seconds_by_owner,
    p95,
    usage_report,
)

STEP = 300
BASE = datetime(2026, 3, 1, 20, 0, tzinfo=UTC)
LOSING = ("failed", "lost", "preempted")


def at(k: int) -> datetime:
    return BASE + timedelta(seconds=STEP * k)


@dataclass(frozen=True)
class Script:
    job_id: str
    owner: str | None
    team: str | None
    submit: int
    #: (wait, gpus, start delay, checkpoints after start, run, outcome) per attempt.
    attempts: tuple[tuple[int, int, int, tuple[int, ...], int, str], ...]


MIDDLE = ("failed", "lost", "stopped", "paused", "preempted", "rejected")
LAST = (*MIDDLE, "succeeded", "cancelled", "open", "stopped_ckpt")


@st.composite
def scripts(draw: st.DrawFn, index: int) -> Script:
    n = draw(st.integers(1, 3))
    attempts = []
    for i in range(n):
        outcome = draw(st.sampled_from(LAST if i == n - 1 else MIDDLE))
        checkpoints = tuple(draw(st.lists(st.integers(1, 6), max_size=2)))
        attempts.append(
            (
                draw(st.integers(0, 40)),
                draw(st.integers(1, 4)),
                draw(st.integers(0, 3)),
                checkpoints,
                draw(st.integers(1, 60)),
                outcome,
            )
        )
    return Script(
        job_id=f"j{index}",
        owner=draw(st.sampled_from(["alice", "bob", None])),
        team=draw(st.sampled_from(["red", "blue", None])),
        submit=draw(st.integers(0, 400)),
        attempts=tuple(attempts),
    )


def events_of(script: Script) -> list[tuple[int, e.Event]]:
    """The job's events as (step, event), in the order the domain would record them."""
    j = script.job_id
    labels = {"team": script.team} if script.team else {}
    spec = JobSpec(data_path="d", model_path="m", output_dir="o", owner=script.owner, labels=labels)
    t = script.submit
    out: list[tuple[int, e.Event]] = [
        (t, e.JobSubmitted(at=at(t), job_id=j, spec=spec)),
        (t, e.JobQueued(at=at(t), job_id=j, priority=5)),
    ]
    for number, (wait, gpus, delay, checkpoints, run, outcome) in enumerate(script.attempts, 1):
        last = number == len(script.attempts)
        t += wait
        out.append(
            (
                t,
                e.JobScheduled(
                    at=at(t), job_id=j, attempt=number, runner_id="r", gpu_ids=tuple(range(gpus))
                ),
            )
        )
        if outcome == "rejected":
            t += 1
            out.append(
                (
                    t,
                    e.AssignmentRejected(
                        at=at(t), job_id=j, attempt=number, runner_id="r", reason="x"
                    ),
                )
            )
            if not last:
                out.append(
                    (t, e.JobRequeued(at=at(t), job_id=j, priority=5, retries=0, reason="x"))
                )
            continue
        t += delay
        out.append(
            (
                t,
                e.JobStarted(
                    at=at(t), job_id=j, attempt=number, runner_id="r", pid=1, command=("swift",)
                ),
            )
        )
        for gap in checkpoints:
            t += gap
            out.append((t, e.CheckpointSaved(at=at(t), job_id=j, attempt=number, step=t, path="c")))
        t += run
        if outcome == "open":
            continue
        retried = outcome in ("failed", "lost")
        match outcome:
            case "succeeded":
                out.append((t, e.JobSucceeded(at=at(t), job_id=j, attempt=number)))
            case "failed":
                out.append(
                    (t, e.JobFailed(at=at(t), job_id=j, attempt=number, exit_code=1, reason="x"))
                )
            case "lost":
                out.append(
                    (t, e.JobLost(at=at(t), job_id=j, attempt=number, runner_id="r", reason="x"))
                )
            case "stopped" | "stopped_ckpt":
                ckpt = "c" if outcome == "stopped_ckpt" else None
                out.append(
                    (
                        t,
                        e.JobStopped(
                            at=at(t), job_id=j, reason="x", attempt=number, checkpoint=ckpt
                        ),
                    )
                )
            case "paused":
                out.append((t, e.JobPaused(at=at(t), job_id=j, reason="x", attempt=number)))
            case "cancelled":
                out.append((t, e.JobCancelled(at=at(t), job_id=j, reason="x", attempt=number)))
            case "preempted":
                out.append(
                    (
                        t,
                        e.StopRequested(
                            at=at(t), job_id=j, reason="x", attempt=number, intent="preempt"
                        ),
                    )
                )
                t += 1
                out.append((t, e.JobStopped(at=at(t), job_id=j, reason="x", attempt=number)))
        if not last:
            requeue: e.Event = (
                e.JobRequeued(at=at(t), job_id=j, priority=5, retries=1, reason="x")
                if retried
                else e.JobQueued(at=at(t), job_id=j, priority=5, reason="resumed")
            )
            out.append((t, requeue))
    return out


# --- the brute force ------------------------------------------------------------------------------


@dataclass
class Run:
    """What a replay of one job's events up to a step says about its current attempt."""

    attempt: int
    gpus: int
    running: bool


def replay_at(events: list[tuple[int, e.Event]], k: int) -> Run | None:
    """The job's running attempt after every event at or before step ``k``."""
    run: Run | None = None
    for step, event in events:
        if step > k:
            break
        match event:
            case e.JobScheduled(attempt=a, gpu_ids=g):
                run = Run(a, len(g), False)
            case e.JobStarted():
                if run is not None:
                    run.running = True
            case (
                e.JobSucceeded()
                | e.JobFailed()
                | e.JobLost()
                | e.JobStopped()
                | e.JobPaused()
                | e.JobCancelled()
                | e.AssignmentRejected()
                | e.JobQueued()
                | e.JobRequeued()
            ):
                run = None
    return run if run is not None and run.running else None


def attempt_fate(events: list[tuple[int, e.Event]], attempt: int) -> tuple[str | None, list[int]]:
    """How the attempt ended (a losing cause or None) and the steps of its checkpoints."""
    checkpoints: list[int] = []
    preempt = False
    ended: str | None = None
    for step, event in events:
        if getattr(event, "attempt", None) not in (attempt, 0) or ended:
            continue
        match event:
            case e.CheckpointSaved():
                checkpoints.append(step)
            case e.StopRequested(intent=intent):
                preempt = "preempt" in intent
            case e.JobFailed():
                ended = "failed"
            case e.JobLost():
                ended = "lost"
            case (
                e.JobStopped(checkpoint=c)
                | e.JobPaused(checkpoint=c)
                | e.JobCancelled(checkpoint=c)
            ):
                ended = "preempted" if preempt else "kept"
                if c is not None:
                    checkpoints.append(step)
            case e.JobSucceeded():
                ended = "kept"
    return (ended if ended in LOSING else None), checkpoints


def key_of(script: Script, group_by: str, k: int) -> str:
    if group_by == "owner":
        return script.owner or NO_OWNER
    if group_by == "day":
        return at(k).date().isoformat()
    return script.team or NO_LABEL


def brute(
    scripts: list[Script], group_by: str, lo: int, hi: int, owner: str | None
) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}

    def row(key: str) -> dict[str, Any]:
        return rows.setdefault(
            key, {"used": 0.0, "lost": 0.0, "attempts": set(), "waits": [], "jobs": {}}
        )

    for script in scripts:
        if owner is not None and (script.owner or NO_OWNER) != owner:
            continue
        events = events_of(script)
        for k in range(lo, hi):
            run = replay_at(events, k)
            if run is None:
                continue
            r = row(key_of(script, group_by, k))
            r["used"] += run.gpus * STEP
            r["attempts"].add((script.job_id, run.attempt))
            cause, checkpoints = attempt_fate(events, run.attempt)
            if cause is not None and not any(c > k for c in checkpoints):
                r["lost"] += run.gpus * STEP
        _waits_and_ending(script, events, group_by, lo, hi, row)
    return rows


def _waits_and_ending(
    script: Script,
    events: list[tuple[int, e.Event]],
    group_by: str,
    lo: int,
    hi: int,
    row: Callable[[str], dict[str, Any]],
) -> None:
    """Queue waits (queued to scheduled) and the job's final status, by plain replay."""
    queued: int | None = None
    status: tuple[str, int] | None = None
    for step, event in events:
        match event:
            case e.JobQueued() | e.JobRequeued():
                queued = step if queued is None else queued
                status = None
            case e.JobScheduled():
                if queued is not None and lo <= step < hi:
                    row(key_of(script, group_by, step))["waits"].append((step - queued) * STEP)
                queued = None
                status = None
            case e.JobSucceeded():
                status = ("succeeded", step)
            case e.JobFailed():
                status = ("failed", step)
            case e.JobStopped():
                status = ("stopped", step)
            case e.JobCancelled():
                status = ("cancelled", step)
                queued = None
    if status is not None and lo <= status[1] < hi:
        jobs = row(key_of(script, group_by, status[1]))["jobs"]
        jobs[status[0]] = jobs.get(status[0], 0) + 1


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 6).flatmap(lambda n: st.tuples(*(scripts(i) for i in range(n)))),
    st.sampled_from(["owner", "day", "label:team"]),
    st.integers(0, 700),
    st.integers(1, 700),
    st.sampled_from([None, "alice", NO_OWNER]),
)
def test_the_report_equals_a_brute_force_replay(
    jobs: tuple[Script, ...], group_by: str, lo: int, span: int, owner: str | None
) -> None:
    ledger = UsageLedger()
    merged = sorted(
        ((step, n, i, ev) for n, s in enumerate(jobs) for i, (step, ev) in enumerate(events_of(s))),
        key=lambda x: (x[0], x[1], x[2]),
    )
    for _, _, _, event in merged:
        ledger.apply(event)
    hi = lo + span
    rows = usage_report(ledger, group_by=group_by, start=at(lo), end=at(hi), owner=owner)
    expected = brute(list(jobs), group_by, lo, hi, owner)
    got = {r.group: r for r in rows}
    assert set(got) == set(expected)
    for key, want in expected.items():
        row = got[key]
        assert row.gpu_hours == round(want["used"] / 3600, 6), key
        assert abs(row.lost_gpu_hours - want["lost"] / 3600) < 1e-5, key
        assert row.attempts == len(want["attempts"]), key
        assert row.queue_waits == len(want["waits"]), key
        assert row.queue_wait_p95_s == p95([float(w) for w in want["waits"]]), key
        mean = sum(want["waits"]) / len(want["waits"]) if want["waits"] else None
        assert row.queue_wait_mean_s == (round(mean, 3) if mean is not None else None), key
        assert row.jobs == dict(sorted(want["jobs"].items())), key


def test_day_spans_cut_at_midnight() -> None:
    start = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)
    assert list(day_spans(start, start + timedelta(hours=26))) == [
        ("2026-03-01", 3600.0),
        ("2026-03-02", 86400.0),
        ("2026-03-03", 3600.0),
    ]


def test_a_failed_attempt_loses_the_work_since_its_last_checkpoint() -> None:
    script = Script("j", "alice", None, 0, ((0, 2, 0, (4,), 8, "failed"),))
    ledger = UsageLedger()
    for _, event in events_of(script):
        ledger.apply(event)
    (row,) = usage_report(ledger, group_by="owner", start=at(0), end=at(100))
    # 2 GPUs for 12 steps of 5 minutes: 2 GPU-hours; lost: the 8 steps after the checkpoint.
    assert (row.group, row.gpu_hours, row.lost_gpu_hours) == ("alice", 2.0, round(2 * 8 / 12, 6))
    assert row.lost_gpu_hours_by_cause == {"failed": round(2 * 8 / 12, 6)}
    assert row.jobs == {"failed": 1}
    assert gpu_seconds_by_owner(ledger, at(100)) == {"alice": 2 * 12 * STEP}


def test_group_by_is_checked() -> None:
    assert check_group_by("owner") is None
    assert check_group_by("label:team") is None
    assert check_group_by("label:") is not None
    assert check_group_by("host") is not None
