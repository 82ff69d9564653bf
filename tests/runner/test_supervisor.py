"""The supervisor against the simulator as a real process tree.

Every test that starts a run checks, at its end, that no process of the run is left.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from tests.runner.runner_helpers import (
    SWIFT_SIM,
    RecordingReporter,
    alive,
    make_spec,
    session_processes,
    tree_pids,
    wait_for,
)

from swift_trainer.core.progress import MetricSample
from swift_trainer.runner.gpu_probe import FakeInventory
from swift_trainer.runner.outcome import MAX_STDERR_TAIL_CHARS, ExportOutcome, JobOutcome
from swift_trainer.runner.run_state import RunStateStore, run_key
from swift_trainer.runner.supervisor import AlreadyRunning, LaunchError, Supervisor
from swift_trainer.runner.swift_command import (
    SwiftInvocation,
    build_export_command,
    build_sft_command,
)
from swift_trainer.runner.training_log import TrainingProgress, list_checkpoints

JOB = run_key("job", "job-1")


def supervisor(state_dir: Path, **kwargs: object) -> Supervisor:
    options: dict[str, object] = {
        "grace_period_s": 10.0,
        "orphan_grace_s": 5.0,
        "poll_interval_s": 0.05,
        "progress_interval_s": 0.0,
        "tree_refresh_s": 0.1,
        "state_flush_s": 0.2,
    }
    options.update(kwargs)
    return Supervisor(state_dir=state_dir, **options)  # type: ignore[arg-type]


@pytest.fixture
async def sup(tmp_path: Path) -> AsyncIterator[Supervisor]:
    instance = supervisor(tmp_path / "state")
    try:
        yield instance
    finally:
        await instance.close(kill=True)


def sft(
    tmp_path: Path,
    env: dict[str, str],
    *,
    gpus: tuple[int, ...] = (0,),
    extra: tuple[str, ...] = (),
    resume_from: str | None = None,
    **train: object,
) -> SwiftInvocation:
    train.setdefault("save_steps", 4)
    train.setdefault("logging_steps", 2)
    return build_sft_command(
        make_spec(**train),
        output_root=tmp_path / "root",
        gpu_ids=gpus,
        swift_executable=SWIFT_SIM,
        base_env=env,
        extra_args=extra,
        resume_from=resume_from,
    )


def script(tmp_path: Path, name: str, body: str, env: dict[str, str]) -> SwiftInvocation:
    """A stand-in trainer for behaviours the simulator has no switch for."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    out = tmp_path / "root" / name
    out.mkdir(parents=True)
    return SwiftInvocation(argv=(sys.executable, str(path), str(out)), env=env, output_dir=str(out))


def assert_gone(pids: set[int], sid: int) -> None:
    survivors = [pid for pid in pids if alive(pid)]
    assert survivors == [], f"processes survived: {survivors}"
    assert session_processes(sid) == []


async def finished(reporter: RecordingReporter) -> JobOutcome | ExportOutcome:
    await asyncio.wait_for(reporter.finished.wait(), timeout=60)
    return reporter.outcomes[-1]


async def test_success_reports_start_progress_checkpoints_and_outcome(
    tmp_path: Path,
    sup: Supervisor,
    sim_env: dict[str, str],
) -> None:
    reporter = RecordingReporter()
    invocation = sft(tmp_path, sim_env)
    pid = await sup.start_job("job-1", 1, invocation, reporter, gpu_ids=[0])
    assert reporter.started == [(pid, invocation.argv)]
    assert sup.is_running(JOB)
    outcome = await finished(reporter)

    assert isinstance(outcome, JobOutcome)
    assert outcome.status == "succeeded", outcome
    assert outcome.exit_code == 0
    assert (outcome.final_step, outcome.max_steps) == (10, 10)  # 40 samples / accumulation 4
    out = Path(invocation.output_dir)
    assert outcome.checkpoint == str(out / "checkpoint-10")
    assert outcome.output_path == str(out / "checkpoint-10")
    assert [step for step, _ in reporter.checkpoints] == [4, 8, 10]
    steps = [p.step for p in reporter.progress]
    assert steps == sorted(steps)
    assert steps[-1] == 10
    assert all(p.max_steps == 10 for p in reporter.progress)
    assert reporter.progress[-1].loss is not None
    assert reporter.progress[-1].elapsed_s is not None
    assert any(line.startswith("run sh: `") for line in reporter.stream("stdout"))
    assert any("Saving model checkpoint" in line for line in reporter.stream("stderr"))
    # tqdm's carriage-return redraws are split into lines, not glued into one huge line
    assert any(line.startswith("Train:") for line in reporter.stream("stderr"))
    logs = out / "runner-logs"
    assert "run sh:" in (logs / "attempt-1.stdout.log").read_text()
    assert not sup.is_running(JOB)
    assert list((tmp_path / "state").glob("*.json")) == []  # state dropped once reported
    assert_gone({pid}, pid)


async def test_stop_keeps_a_checkpoint_and_leaves_no_process(
    tmp_path: Path,
    sup: Supervisor,
    sim_env: dict[str, str],
) -> None:
    reporter = RecordingReporter()
    invocation = sft(tmp_path, sim_env, save_steps=1000, max_steps=500)
    pid = await sup.start_job("job-1", 1, invocation, reporter, gpu_ids=[0])
    await wait_for(lambda: any(p.step >= 3 for p in reporter.progress))
    pids = tree_pids(pid)
    assert len(pids) >= 2  # the swift launcher and the trainer it runs
    outcome = await sup.stop(JOB)

    assert isinstance(outcome, JobOutcome)
    assert outcome.status == "stopped"
    # only the trainer got SIGTERM: it saved and finished, and the launcher exited with it
    assert outcome.exit_code == 0
    assert outcome.checkpoint is not None  # graceful_exit saved at the current step
    saved = list_checkpoints(invocation.output_dir)
    assert [c.path for c in saved] == [outcome.checkpoint]
    assert 3 <= saved[0].step < 500
    assert reporter.checkpoints == [(saved[0].step, saved[0].path)]
    assert reporter.outcomes == [outcome]
    assert_gone(pids, pid)


async def test_stop_of_a_multi_gpu_job_reaches_every_rank(
    tmp_path: Path,
    sup: Supervisor,
    sim_env: dict[str, str],
) -> None:
    registry = FakeInventory(4, output_root=tmp_path)
    sup.registry = registry
    reporter = RecordingReporter()
    invocation = sft(tmp_path, sim_env, gpus=(1, 2), save_steps=1000, max_steps=500)
    assert invocation.env["NPROC_PER_NODE"] == "2"
    pid = await sup.start_job("job-1", 1, invocation, reporter, gpu_ids=[1, 2])
    await wait_for(lambda: any(p.step >= 2 for p in reporter.progress))
    await wait_for(lambda: len(tree_pids(pid)) >= 4)
    pids = tree_pids(pid)  # launcher, torchrun agent, two ranks
    snapshot = registry.snapshot()
    assert [len(g.processes) for g in snapshot.gpus] == [0, 1, 1, 0]
    assert snapshot.gpus[1].memory_used_mib > 0
    assert pids >= sup.own_pids() - {pid} and pid in sup.own_pids()

    outcome = await sup.stop(JOB)
    assert isinstance(outcome, JobOutcome)
    assert outcome.status == "stopped"
    assert outcome.exit_code == 0  # both ranks saved; torchrun and swift exited cleanly
    assert outcome.checkpoint is not None
    assert_gone(pids, pid)
    assert [len(g.processes) for g in registry.snapshot().gpus] == [0, 0, 0, 0]


async def test_a_trainer_ignoring_sigterm_is_killed_after_the_grace_period(
    tmp_path: Path,
    sim_env: dict[str, str],
) -> None:
    body = """
        import os, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
        print("started", flush=True)
        time.sleep(60)
    """
    invocation = script(tmp_path, "stubborn", body, sim_env)
    sup = supervisor(tmp_path / "state", grace_period_s=600)
    reporter = RecordingReporter()
    pid = await sup.start_job("job-1", 1, invocation, reporter)
    await wait_for(lambda: len(tree_pids(pid)) >= 2 and "started" in reporter.stream("stdout"))
    pids = tree_pids(pid)
    started = asyncio.get_running_loop().time()
    outcome = await sup.stop(JOB, grace_period_s=0.5)
    assert asyncio.get_running_loop().time() - started < 10
    assert isinstance(outcome, JobOutcome)
    assert outcome.status == "stopped"
    assert outcome.exit_code == -signal.SIGKILL
    assert outcome.checkpoint is None
    assert_gone(pids, pid)


async def test_stop_spares_forked_dataloader_workers(
    tmp_path: Path,
    sim_env: dict[str, str],
) -> None:
    """Only the trainer gets SIGTERM: a signalled DataLoader worker would crash it."""
    body = """
        import os, signal, sys, time
        worker = os.fork()
        if worker == 0:  # a forked DataLoader worker: same command line, dies on SIGTERM
            time.sleep(60)
            os._exit(0)
        stop = False
        def on_term(*_):
            global stop
            stop = True
        signal.signal(signal.SIGTERM, on_term)
        print("ready", flush=True)
        while not stop:
            time.sleep(0.02)
        time.sleep(0.2)  # finish the step, then look at the worker as torch does
        if os.waitpid(worker, os.WNOHANG)[0]:
            print("RuntimeError: DataLoader worker exited unexpectedly", file=sys.stderr)
            sys.exit(1)
        os.kill(worker, signal.SIGKILL)  # shutting its own workers down
        os.waitpid(worker, 0)
        print("checkpoint saved", flush=True)
    """
    sup = supervisor(tmp_path / "state")
    reporter = RecordingReporter()
    pid = await sup.start_job("job-1", 1, script(tmp_path, "loader", body, sim_env), reporter)
    await wait_for(lambda: "ready" in reporter.stream("stdout") and len(tree_pids(pid)) == 2)
    pids = tree_pids(pid)
    outcome = await sup.stop(JOB)
    assert isinstance(outcome, JobOutcome)
    assert outcome.status == "stopped"
    assert outcome.exit_code == 0, outcome.stderr_tail
    assert "checkpoint saved" in reporter.stream("stdout")
    assert_gone(pids, pid)


async def test_failure_reports_exit_code_and_stderr_tail(
    tmp_path: Path,
    sup: Supervisor,
    sim_env: dict[str, str],
) -> None:
    reporter = RecordingReporter()
    invocation = sft(tmp_path, {**sim_env, "SWIFT_SIM_FAIL_AT_STEP": "6"})
    pid = await sup.start_job("job-1", 1, invocation, reporter)
    outcome = await finished(reporter)
    assert isinstance(outcome, JobOutcome)
    assert outcome.status == "failed"
    assert outcome.exit_code == 1
    assert "exited with code 1" in outcome.reason
    assert "step 4 of 10" in outcome.reason
    assert "Traceback (most recent call last):" in outcome.stderr_tail
    assert "CUDA out of memory" in outcome.stderr_tail
    assert len(outcome.stderr_tail.splitlines()) <= 50
    assert outcome.checkpoint == str(Path(invocation.output_dir) / "checkpoint-4")
    assert_gone({pid}, pid)


async def test_stderr_tail_is_the_last_fifty_lines(tmp_path: Path, sim_env: dict[str, str]) -> None:
    body = """
        import sys
        for i in range(120):
            print(f"line {i}", file=sys.stderr)
        sys.exit(3)
    """
    sup = supervisor(tmp_path / "state")
    reporter = RecordingReporter()
    await sup.start_job("job-1", 1, script(tmp_path, "noisy", body, sim_env), reporter)
    outcome = await finished(reporter)
    assert isinstance(outcome, JobOutcome)
    assert outcome.exit_code == 3
    tail = outcome.stderr_tail.splitlines()
    assert tail == [f"line {i}" for i in range(70, 120)]
    assert len(reporter.stream("stderr")) == 120


async def test_stderr_tail_fits_a_failure_report(tmp_path: Path, sim_env: dict[str, str]) -> None:
    body = """
        import sys
        for i in range(60):
            print(str(i) * 5000, file=sys.stderr)
        sys.exit(1)
    """
    sup = supervisor(tmp_path / "state")
    reporter = RecordingReporter()
    await sup.start_job("job-1", 1, script(tmp_path, "verbose", body, sim_env), reporter)
    outcome = await finished(reporter)
    assert isinstance(outcome, JobOutcome)
    assert len(outcome.stderr_tail) == MAX_STDERR_TAIL_CHARS  # ReportFailed's limit
    assert outcome.stderr_tail.endswith("59" * 10)


async def test_crash_after_summary_is_a_failure(
    tmp_path: Path,
    sup: Supervisor,
    sim_env: dict[str, str],
) -> None:
    reporter = RecordingReporter()
    invocation = sft(tmp_path, {**sim_env, "SWIFT_SIM_CRASH_AFTER_SUMMARY": "1"})
    await sup.start_job("job-1", 1, invocation, reporter)
    outcome = await finished(reporter)
    assert isinstance(outcome, JobOutcome)
    assert outcome.status == "failed"
    assert outcome.exit_code == 1
    assert outcome.final_step == outcome.max_steps == 10
    assert "final summary" in outcome.reason
    assert "NCCL error" in outcome.stderr_tail


async def test_exit_zero_before_the_final_step_is_a_failure(
    tmp_path: Path,
    sim_env: dict[str, str],
) -> None:
    body = """
        import json, sys
        out = sys.argv[1]
        with open(f"{out}/logging.jsonl", "a") as f:
            f.write(json.dumps({"loss": 1.0, "global_step/max_steps": "5/100"}) + "\\n")
        sys.exit(0)
    """
    sup = supervisor(tmp_path / "state")
    reporter = RecordingReporter()
    await sup.start_job("job-1", 1, script(tmp_path, "quitter", body, sim_env), reporter)
    outcome = await finished(reporter)
    assert isinstance(outcome, JobOutcome)
    assert outcome.status == "failed"
    assert outcome.exit_code == 0
    assert "step 5 of 100" in outcome.reason
    assert "without its final summary" in outcome.reason


async def test_malformed_log_lines_are_counted_not_fatal(
    tmp_path: Path,
    sim_env: dict[str, str],
) -> None:
    body = """
        import json, sys, time
        out = sys.argv[1]
        with open(f"{out}/logging.jsonl", "a") as f:
            for step in (1, 2, 3):
                f.write(json.dumps({"loss": 1.0 / step, "global_step/max_steps": f"{step}/3"}))
                f.write("\\n{broken json\\n\\x00\\x01 binary\\n")
                f.flush()
                time.sleep(0.05)
            f.write(json.dumps({"train_runtime": 1.0, "global_step/max_steps": "3/3"}) + "\\n")
    """
    sup = supervisor(tmp_path / "state")
    reporter = RecordingReporter()
    await sup.start_job("job-1", 1, script(tmp_path, "messy", body, sim_env), reporter)
    outcome = await finished(reporter)
    assert isinstance(outcome, JobOutcome)
    assert outcome.status == "succeeded"
    assert outcome.malformed_log_lines == 6
    assert [p.step for p in reporter.progress][-1] == 3


async def test_a_new_attempt_ignores_the_previous_attempts_files(
    tmp_path: Path,
    sup: Supervisor,
    sim_env: dict[str, str],
) -> None:
    first = RecordingReporter()
    await sup.start_job("job-1", 1, sft(tmp_path, sim_env, max_steps=4), first)
    assert (await finished(first)).status == "succeeded"
    checkpoint = str(Path(sft(tmp_path, sim_env).output_dir) / "checkpoint-4")
    assert first.checkpoints == [(4, checkpoint)]

    second = RecordingReporter()
    invocation = sft(
        tmp_path,
        {**sim_env, "SWIFT_SIM_FAIL_AT_STEP": "8"},
        max_steps=10,
        resume_from=checkpoint,
    )
    await sup.start_job("job-1", 2, invocation, second)
    outcome = await finished(second)
    assert isinstance(outcome, JobOutcome)
    # the first attempt's summary ("4/4") in the same logging.jsonl must not count
    assert outcome.status == "failed"
    assert second.checkpoints == []  # checkpoint-4 was the first attempt's
    assert [p.step for p in second.progress] == [6]
    assert outcome.final_step == 6


async def test_reattach_after_a_runner_restart(tmp_path: Path, sim_env: dict[str, str]) -> None:
    state = tmp_path / "state"
    first = supervisor(state)
    before = RecordingReporter()
    invocation = sft(tmp_path, {**sim_env, "SWIFT_SIM_STEP_SECONDS": "0.05"}, max_steps=40)
    pid = await first.start_job("job-1", 3, invocation, before, gpu_ids=[0])
    await wait_for(lambda: any(p.step >= 2 for p in before.progress))
    await first.close()  # the runner goes away; the job does not
    assert alive(pid)
    (record,) = RunStateStore(state).load_all()
    assert (record.pid, record.attempt, record.argv) == (pid, 3, invocation.argv)

    second = supervisor(state)
    after = RecordingReporter()
    records = await second.reattach(job_reporter=lambda r: after, export_reporter=lambda r: after)
    assert [r.job_id for r in records] == ["job-1"]
    assert second.is_running(JOB)
    outcome = await finished(after)
    assert isinstance(outcome, JobOutcome)
    assert outcome.status == "succeeded", outcome
    assert outcome.exit_code is None  # not our child any more: the log decided
    assert "runner restart" in outcome.reason
    assert after.progress[-1].step == 40
    reported = {path for _, path in before.checkpoints + after.checkpoints}
    assert len(reported) == len(before.checkpoints) + len(after.checkpoints)  # no repeats
    assert list(state.glob("*.json")) == []
    assert_gone({pid}, pid)
    await second.close()


async def test_reattach_reports_a_vanished_process(tmp_path: Path, sim_env: dict[str, str]) -> None:
    state = tmp_path / "state"
    first = supervisor(state)
    reporter = RecordingReporter()
    pid = await first.start_job("job-1", 1, sft(tmp_path, sim_env, max_steps=500), reporter)
    await wait_for(lambda: any(p.step >= 2 for p in reporter.progress))
    pids = tree_pids(pid)
    await first.close()
    for victim in pids:  # the host rebooted, or the OOM killer struck, while we were away
        try:
            psutil.Process(victim).kill()
        except psutil.NoSuchProcess:
            continue
    await wait_for(lambda: not any(alive(p) for p in pids))

    second = supervisor(state)
    after = RecordingReporter()
    await second.reattach(job_reporter=lambda r: after, export_reporter=lambda r: after)
    outcome = await finished(after)
    assert isinstance(outcome, JobOutcome)
    assert outcome.status == "failed"
    assert outcome.exit_code is None
    assert "vanished" in outcome.reason
    await second.close()


async def test_stop_after_reattach(tmp_path: Path, sim_env: dict[str, str]) -> None:
    state = tmp_path / "state"
    first = supervisor(state)
    reporter = RecordingReporter()
    invocation = sft(tmp_path, sim_env, gpus=(0, 1), save_steps=1000, max_steps=500)
    pid = await first.start_job("job-1", 1, invocation, reporter, gpu_ids=[0, 1])
    await wait_for(lambda: len(tree_pids(pid)) >= 4 and bool(reporter.progress))
    pids = tree_pids(pid)
    await first.close()

    second = supervisor(state)
    after = RecordingReporter()
    await second.reattach(job_reporter=lambda r: after, export_reporter=lambda r: after)
    outcome = await second.stop(JOB)
    assert isinstance(outcome, JobOutcome)
    assert outcome.status == "stopped"
    assert outcome.checkpoint is not None
    assert_gone(pids, pid)
    await second.close()


async def test_export_success_and_failure(
    tmp_path: Path,
    sup: Supervisor,
    sim_env: dict[str, str],
) -> None:
    train = RecordingReporter()
    await sup.start_job("job-1", 1, sft(tmp_path, sim_env, max_steps=2), train)
    job = await finished(train)
    assert isinstance(job, JobOutcome)
    assert job.checkpoint is not None

    ok = RecordingReporter()
    invocation = build_export_command(job.checkpoint, swift_executable=SWIFT_SIM, base_env=sim_env)
    pid = await sup.start_export("job-1", "exp-1", invocation, ok)
    assert ok.started[0][0] == pid
    outcome = await finished(ok)
    assert isinstance(outcome, ExportOutcome)
    assert outcome.status == "succeeded", outcome
    assert outcome.artifact_path == f"{job.checkpoint}-merged"
    assert (Path(outcome.artifact_path) / "config.json").is_file()
    assert any("Successfully merged" in line for line in ok.stream("stderr"))

    again = RecordingReporter()  # the merged folder exists now and overwrite was not asked
    await sup.start_export("job-1", "exp-2", invocation, again)
    failed = await finished(again)
    assert isinstance(failed, ExportOutcome)
    assert failed.status == "failed"
    assert failed.exit_code == 1
    assert "FileExistsError" in failed.stderr_tail
    assert failed.artifact_path is None


async def test_export_that_exits_zero_without_a_model_fails(
    tmp_path: Path,
    sup: Supervisor,
    sim_env: dict[str, str],
) -> None:
    reporter = RecordingReporter()
    target = tmp_path / "merged"
    invocation = SwiftInvocation(
        argv=(sys.executable, "-c", "pass"), env=sim_env, output_dir=str(target)
    )
    await sup.start_export("job-1", "exp-x", invocation, reporter)
    outcome = await finished(reporter)
    assert isinstance(outcome, ExportOutcome)
    assert outcome.status == "failed"
    assert "wrote no model" in outcome.reason


async def test_launch_errors_are_raised(
    tmp_path: Path, sup: Supervisor, sim_env: dict[str, str]
) -> None:
    invocation = SwiftInvocation(
        argv=(str(tmp_path / "no-such-swift"), "sft"),
        env=sim_env,
        output_dir=str(tmp_path / "out"),
    )
    with pytest.raises(LaunchError, match="executable not found"):
        await sup.start_job("job-1", 1, invocation, RecordingReporter())
    assert not sup.is_running(JOB)


async def test_redelivered_start_is_harmless(
    tmp_path: Path,
    sup: Supervisor,
    sim_env: dict[str, str],
) -> None:
    reporter = RecordingReporter()
    invocation = sft(tmp_path, sim_env, max_steps=200)
    pid = await sup.start_job("job-1", 1, invocation, reporter)
    assert await sup.start_job("job-1", 1, invocation, reporter) == pid
    assert len(reporter.started) == 1
    with pytest.raises(AlreadyRunning):
        await sup.start_job("job-1", 2, invocation, reporter)
    assert [r.job_id for r in sup.running()] == ["job-1"]
    assert await sup.stop(run_key("job", "other")) is None


class BrokenReporter(RecordingReporter):
    async def on_progress(
        self, progress: TrainingProgress, earlier: tuple[MetricSample, ...] = ()
    ) -> None:
        raise ConnectionError("the bus is down")

    async def on_log_line(self, stream: object, line: str) -> None:
        raise ConnectionError("the bus is down")


async def test_a_failing_reporter_does_not_stop_supervision(
    tmp_path: Path,
    sup: Supervisor,
    sim_env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    reporter = BrokenReporter()
    await sup.start_job("job-1", 1, sft(tmp_path, sim_env, max_steps=4), reporter)
    outcome = await finished(reporter)
    assert outcome.status == "succeeded"
    assert "reporter failed" in caplog.text


async def test_reattach_with_nothing_to_reattach(tmp_path: Path) -> None:
    sup = supervisor(tmp_path)
    reporter = RecordingReporter()
    records = await sup.reattach(
        job_reporter=lambda r: reporter, export_reporter=lambda r: reporter
    )
    assert records == []
    assert sup.running() == []


def test_no_stray_simulator_processes_remain(sim_env: dict[str, str]) -> None:
    """A last guard for the whole module: nothing these tests started still runs."""
    session = sim_env["SWIFT_TRAINER_TEST_SESSION"]
    strays = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("SWIFT_TRAINER_TEST_SESSION") != session:
                continue
            if proc.status() != psutil.STATUS_ZOMBIE:
                strays.append((proc.pid, proc.cmdline()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    assert strays == []


async def test_checkpoints_rotated_out_are_reported_removed(
    tmp_path: Path, sup: Supervisor, sim_env: dict[str, str]
) -> None:
    reporter = RecordingReporter()
    invocation = sft(tmp_path, sim_env, max_steps=12, save_steps=2, save_total_limit=2)
    await sup.start_job("job-1", 1, invocation, reporter)
    outcome = await finished(reporter)
    assert outcome.status == "succeeded"
    out = Path(invocation.output_dir)
    kept = [c.path for c in list_checkpoints(out)]
    assert kept == [str(out / "checkpoint-10"), str(out / "checkpoint-12")]
    reported = {path for _, path in reporter.checkpoints}
    # Every reported checkpoint that is gone was reported removed, once.
    assert sorted(reporter.removed) == sorted(reported - set(kept))
    assert len(reporter.removed) == len(set(reporter.removed))
