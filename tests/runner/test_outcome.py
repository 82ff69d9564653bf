"""The outcome rules alone: no processes, no files, just facts in and an outcome out."""

from __future__ import annotations

import signal

from swift_trainer.runner.outcome import (
    MAX_REASON_CHARS,
    MAX_STDERR_TAIL_CHARS,
    ExportFacts,
    ExportOutcome,
    JobFacts,
    JobOutcome,
    clip,
    clip_stderr_tail,
    decide_export,
    decide_job,
    exit_text,
    lost_track_outcome,
)
from swift_trainer.runner.training_log import TrainingSummary

FINAL = TrainingSummary(step=10, max_steps=10)


def facts(**kwargs: object) -> JobFacts:
    base: dict[str, object] = {
        "exit_code": 0,
        "last_step": 10,
        "max_steps": 10,
        "summary": FINAL,
        "checkpoint": "/out/checkpoint-10",
        "output_dir": "/out",
        "stderr_tail": "tail",
    }
    base.update(kwargs)
    return JobFacts(**base)  # type: ignore[arg-type]


def test_exit_zero_and_the_final_summary_succeed_with_the_newest_checkpoint() -> None:
    outcome = decide_job(facts(malformed_log_lines=2))
    assert outcome == JobOutcome(
        status="succeeded",
        reason="training reached its final step",
        exit_code=0,
        stderr_tail="tail",
        final_step=10,
        max_steps=10,
        checkpoint="/out/checkpoint-10",
        output_path="/out/checkpoint-10",
        malformed_log_lines=2,
    )
    assert decide_job(facts(checkpoint=None)).output_path == "/out"


def test_an_unknown_exit_code_is_judged_from_the_log() -> None:
    outcome = decide_job(facts(exit_code=None))
    assert outcome.status == "succeeded"
    assert "exit code unknown after a runner restart" in outcome.reason
    vanished = decide_job(facts(exit_code=None, summary=None, last_step=4))
    assert vanished.status == "failed"
    assert vanished.reason.startswith("the process vanished at step 4 of 10")


def test_a_summary_without_a_step_needs_the_log_to_reach_the_final_step() -> None:
    bare = TrainingSummary(step=None, max_steps=10)
    assert decide_job(facts(summary=bare)).status == "failed"
    assert decide_job(facts(summary=bare, log_reached_final_step=True)).status == "succeeded"


def test_exit_zero_short_of_the_final_step_fails() -> None:
    outcome = decide_job(facts(summary=None, last_step=6))
    assert outcome.status == "failed"
    assert outcome.reason == (
        "swift exited with code 0 but training ended at step 6 of 10 without its final summary line"
    )
    assert decide_job(facts(last_step=None, summary=None)).reason.startswith(
        "swift exited with code 0 but training ended at no training step"
    )


def test_a_crash_after_the_summary_is_a_failure() -> None:
    outcome = decide_job(facts(exit_code=1))
    assert outcome.status == "failed"
    assert outcome.reason == (
        "swift failed at step 10 of 10: it exited with code 1 after writing its final "
        "summary (a crash while finishing)"
    )
    killed = decide_job(facts(exit_code=-signal.SIGKILL, summary=None, unkillable=(7, 8)))
    assert killed.reason == (
        "swift failed at step 10 of 10: it was killed by SIGKILL; processes [7, 8] survived SIGKILL"
    )


def test_a_requested_stop_is_stopped_whatever_the_exit_code() -> None:
    for code in (0, 1, -15, None):
        outcome = decide_job(facts(exit_code=code, stop_requested=True, last_step=5))
        assert outcome.status == "stopped"
        assert (
            outcome.reason
            == "stopped on request at step 5 of 10; last checkpoint /out/checkpoint-10"
        )
    early = decide_job(facts(stop_requested=True, last_step=None, checkpoint=None))
    assert early.reason == "stopped on request at no training step; no checkpoint yet"


def test_exports_need_the_written_model_and_a_clean_exit() -> None:
    ok = ExportFacts(exit_code=0, artifact_path="/m", artifact_written=True, stderr_tail="t")
    assert decide_export(ok) == ExportOutcome(
        status="succeeded",
        reason="merged model written",
        exit_code=0,
        artifact_path="/m",
        stderr_tail="t",
    )
    empty = ExportFacts(exit_code=0, artifact_path="/m")
    assert decide_export(empty).reason == "swift export exited with code 0 but wrote no model to /m"
    crashed = ExportFacts(exit_code=-signal.SIGSEGV, artifact_path="/m", artifact_written=True)
    assert decide_export(crashed).reason == "swift export failed: it was killed by SIGSEGV"
    stopped = ExportFacts(exit_code=0, stop_requested=True, artifact_written=True)
    assert decide_export(stopped).status == "stopped"


def test_reasons_and_tails_fit_their_commands() -> None:
    assert clip("short") == "short"
    long = clip("x" * (MAX_REASON_CHARS + 10))
    assert len(long) == MAX_REASON_CHARS
    assert long.endswith("\u2026")
    outcome = decide_job(facts(exit_code=2, summary=None, unkillable=tuple(range(2000))))
    assert len(outcome.reason) == MAX_REASON_CHARS
    tail = clip_stderr_tail(["a" * MAX_STDERR_TAIL_CHARS, "last"])
    assert len(tail) == MAX_STDERR_TAIL_CHARS
    assert tail.endswith("\nlast")
    assert exit_text(None).startswith("its exit code is unknown")
    assert exit_text(-99) == "it was killed by signal 99"
    assert exit_text(3) == "it exited with code 3"


def test_lost_track_is_a_failure_with_the_error_named() -> None:
    job = lost_track_outcome("job", RuntimeError("boom"), exit_code=None, stderr_tail="t")
    assert job == JobOutcome(
        status="failed",
        reason="the runner lost track of the process: RuntimeError: boom",
        stderr_tail="t",
    )
    export = lost_track_outcome("export", OSError("gone"), exit_code=1, stderr_tail="t")
    assert export == ExportOutcome(
        status="failed", reason="the runner lost track of the process: OSError: gone", exit_code=1
    )
