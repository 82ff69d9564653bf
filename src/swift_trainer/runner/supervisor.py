"""Runs ``swift sft`` / ``swift export`` as supervised process trees on the GPU host.

The supervisor launches each run in its own session with stdout/stderr going to files
(``log_tail``), keeps a durable record of it (``run_state``), watches it (``run_watch``,
over ``process_tree``) and reports its outcome (``outcome``) through the ``JobReporter`` /
``ExportReporter`` callbacks; nothing here knows about the bus. ``reattach()`` after a
runner restart resumes watching live runs (exit code unknown: the log decides) and
reports vanished ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Literal

import psutil

from swift_trainer.core.errors import SwiftTrainerError

from .failure_classifier import GpuFault
from .gpu_probe import GpuProcessRegistry
from .outcome import ExportOutcome, JobOutcome, lost_track_outcome
from .process_tree import ProcessTree, live_pids
from .run_state import RunRecord, RunStateStore, run_key, state_file_name
from .run_watch import (
    ExportReporter,
    JobReporter,
    WatchedRun,
    WatchTiming,
    monitor,
    report_safely,
)
from .swift_command import SwiftInvocation
from .training_log import CheckpointWatcher, current_log_size

_log = logging.getLogger(__name__)
RUNNER_LOG_DIR: Final = "runner-logs"


class LaunchError(SwiftTrainerError):
    """The process could not be started at all (missing executable, unwritable folder)."""

    code = "launch_failed"


class AlreadyRunning(SwiftTrainerError):
    code = "already_running"


class CaptureFiles:
    """The files a run's stdout/stderr are appended to, opened before it starts."""

    def __init__(self, log_dir: Path, stem: str) -> None:
        self.stdout_path = log_dir / f"{stem}.stdout.log"
        self.stderr_path = log_dir / f"{stem}.stderr.log"
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            self.stdout = self.stdout_path.open("ab")
        except OSError as exc:
            raise LaunchError(f"cannot write {self.stdout_path}: {exc.strerror or exc}") from exc
        try:
            self.stderr = self.stderr_path.open("ab")
        except OSError as exc:
            self.stdout.close()
            raise LaunchError(f"cannot write {self.stderr_path}: {exc.strerror or exc}") from exc
        self.stdout_offset = self.stdout.tell()
        self.stderr_offset = self.stderr.tell()

    def close(self) -> None:
        self.stdout.close()
        self.stderr.close()


class Supervisor:
    """Starts, watches, stops and re-attaches the swift processes of one runner.

    ``grace_period_s`` is how long a stopped job may take to write its graceful-exit
    checkpoint before it is killed; ``orphan_grace_s`` how long processes may linger after
    the launcher has exited on its own before they are killed. ``process_registry`` (the
    fake inventory, in simulation) learns which process trees run on which GPUs.
    """

    def __init__(
        self,
        *,
        state_dir: str | Path,
        grace_period_s: float = 60.0,
        orphan_grace_s: float = 30.0,
        # Output lines wait up to this long in the files before they are published: 0.1 s
        # keeps a line's way to the API well under the 500 ms goal (bench_logs.py).
        poll_interval_s: float = 0.1,
        progress_interval_s: float = 5.0,
        tree_refresh_s: float = 2.0,
        state_flush_s: float = 5.0,
        stderr_tail_lines: int = 50,
        process_registry: GpuProcessRegistry | None = None,
        gpu_faults: Callable[[tuple[int, ...], float], tuple[GpuFault, ...]] | None = None,
    ) -> None:
        self.store = RunStateStore(state_dir)
        self.grace_period_s = grace_period_s
        self.orphan_grace_s = orphan_grace_s
        self.poll_interval_s = poll_interval_s
        self.progress_interval_s = progress_interval_s
        self.tree_refresh_s = tree_refresh_s
        self.state_flush_s = state_flush_s
        self.stderr_tail_lines = stderr_tail_lines
        self.registry = process_registry
        #: Reads the faults NVML saw on a run's GPUs since it started (blocking).
        self.gpu_faults = gpu_faults
        self._runs: dict[str, WatchedRun] = {}

    # --- public API ---------------------------------------------------------------------

    async def start_job(
        self,
        job_id: str,
        attempt: int,
        invocation: SwiftInvocation,
        reporter: JobReporter,
        *,
        gpu_ids: Sequence[int] = (),
        cwd: str | Path | None = None,
    ) -> int:
        """Launch one attempt of a job; returns the launcher's pid once ``on_started`` ran.

        A redelivered start for the attempt already running is a no-op (same pid back).
        """
        key = run_key("job", job_id)
        existing = self._runs.get(key)
        if existing is not None:
            if existing.record.attempt == attempt:
                return existing.record.pid
            raise AlreadyRunning(
                f"job {job_id!r} is already running attempt {existing.record.attempt} here",
            )
        output_dir = Path(invocation.output_dir)
        log_dir = output_dir / RUNNER_LOG_DIR
        record, process = await self._launch(
            kind="job",
            job_id=job_id,
            attempt=attempt,
            export_id=None,
            invocation=invocation,
            log_dir=log_dir,
            stem=f"attempt-{attempt}",
            gpu_ids=gpu_ids,
            cwd=cwd,
        )
        return await self._begin(record, process, job_reporter=reporter)

    async def start_export(
        self,
        job_id: str,
        export_id: str,
        invocation: SwiftInvocation,
        reporter: ExportReporter,
        *,
        gpu_ids: Sequence[int] = (),
        cwd: str | Path | None = None,
    ) -> int:
        """Launch ``swift export``; its output lands in ``invocation.output_dir``.

        Its stdout/stderr files go next to the checkpoint (not into the artifact folder,
        which swift refuses to write into when it exists).
        """
        key = run_key("export", export_id)
        if key in self._runs:
            return self._runs[key].record.pid
        artifact = Path(invocation.output_dir)
        record, process = await self._launch(
            kind="export",
            job_id=job_id,
            attempt=0,
            export_id=export_id,
            invocation=invocation,
            log_dir=artifact.parent / RUNNER_LOG_DIR,
            stem=f"export-{state_file_name(export_id)[:-5]}",
            gpu_ids=gpu_ids,
            cwd=cwd,
        )
        record.artifact_path = str(artifact)
        return await self._begin(record, process, export_reporter=reporter)

    def request_stop(self, key: str, *, grace_period_s: float | None = None) -> bool:
        """Ask a run to stop (SIGTERM, grace, SIGKILL); False if it is not running here.

        ``grace_period_s`` overrides the supervisor's for this stop (a full fine-tune's
        checkpoint takes longer to write than a LoRA adapter).
        """
        run = self._runs.get(key)
        if run is None:
            return False
        if grace_period_s is not None:
            run.grace_period_s = grace_period_s
        if not run.record.stop_requested:
            run.record.stop_requested = True
            self.store.save(run.record)
        run.stop_event.set()
        return True

    async def stop(
        self,
        key: str,
        *,
        grace_period_s: float | None = None,
    ) -> JobOutcome | ExportOutcome | None:
        """Stop a run and wait for its outcome (``on_finished`` has run by then)."""
        if not self.request_stop(key, grace_period_s=grace_period_s):
            return None
        return await self.wait(key)

    async def stop_job(
        self,
        job_id: str,
        *,
        grace_period_s: float | None = None,
    ) -> JobOutcome | None:
        outcome = await self.stop(run_key("job", job_id), grace_period_s=grace_period_s)
        return outcome if isinstance(outcome, JobOutcome) else None

    async def wait(self, key: str) -> JobOutcome | ExportOutcome | None:
        run = self._runs.get(key)
        if run is None:
            return None
        return await asyncio.shield(run.done)

    def is_running(self, key: str) -> bool:
        return key in self._runs

    def running(self) -> list[RunRecord]:
        return [run.record for run in self._runs.values()]

    def own_pids(self) -> set[int]:
        """Pids of every live process of every run: the "ours" in foreign-usage checks.

        It reads ``/proc`` for the whole host (once for all runs): on the event loop, call
        ``own_pids_async`` instead.
        """
        return live_pids([run.tree for run in self._runs.values()])

    async def own_pids_async(self) -> set[int]:
        """``own_pids`` in a worker thread, so the scan never blocks the event loop."""
        return await asyncio.to_thread(live_pids, [run.tree for run in self._runs.values()])

    @property
    def timing(self) -> WatchTiming:
        return WatchTiming(
            grace_period_s=self.grace_period_s,
            orphan_grace_s=self.orphan_grace_s,
            poll_interval_s=self.poll_interval_s,
            tree_refresh_s=self.tree_refresh_s,
            state_flush_s=self.state_flush_s,
        )

    async def reattach(
        self,
        *,
        job_reporter: Callable[[RunRecord], JobReporter],
        export_reporter: Callable[[RunRecord], ExportReporter],
    ) -> list[RunRecord]:
        """After a runner restart: watch the runs of the state folder again.

        Live ones (leader or any session member still there, create times matching) are
        watched to their end as if never left; gone ones are judged from their log at once
        (``exit_code`` None) and reported through ``on_finished``. Returns the records.
        """
        records = []
        for record in self.store.load_all():
            if record.key in self._runs:
                continue
            tree = ProcessTree(record.pid, record.sid, record.create_time, record.processes)
            if record.kind == "job":
                run = self._track(record, tree, None, job_reporter=job_reporter(record))
            else:
                run = self._track(record, tree, None, export_reporter=export_reporter(record))
            self._start_watch(run)
            records.append(record)
        return records

    async def close(self, *, kill: bool = False) -> None:
        """Stop watching. Processes keep running (a restarted runner re-attaches) unless
        ``kill``, which stops every run first."""
        if kill:
            keys = list(self._runs)
            for key in keys:
                self.request_stop(key)
            await asyncio.gather(*(self.wait(key) for key in keys), return_exceptions=True)
        for run in list(self._runs.values()):
            for task in (run.task, run.wait_task):
                if task is not None:
                    task.cancel()
            for task in (run.task, run.wait_task):
                if task is not None:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self._flush(run)
            if not run.done.done():
                run.done.cancel()  # nobody waits forever on a run no longer watched
        self._runs.clear()

    # --- launching ----------------------------------------------------------------------

    async def _launch(
        self,
        *,
        kind: Literal["job", "export"],
        job_id: str,
        attempt: int,
        export_id: str | None,
        invocation: SwiftInvocation,
        log_dir: Path,
        stem: str,
        gpu_ids: Sequence[int],
        cwd: str | Path | None,
    ) -> tuple[RunRecord, asyncio.subprocess.Process]:
        capture = CaptureFiles(log_dir, stem)
        log_start = current_log_size(invocation.output_dir) if kind == "job" else 0
        known_checkpoints: tuple[str, ...] = ()
        if kind == "job":
            known_checkpoints = tuple(
                c.path for c in CheckpointWatcher(invocation.output_dir).scan()
            )
        try:
            process = await asyncio.create_subprocess_exec(
                *invocation.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=capture.stdout,
                stderr=capture.stderr,
                env=invocation.env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            if exc.errno == errno.ENOENT:
                reason = f"executable not found: {invocation.argv[0]}"
            raise LaunchError(f"cannot start {invocation.argv[0]!r}: {reason}") from exc
        finally:
            capture.close()  # the child holds its own descriptors
        try:
            create_time = psutil.Process(process.pid).create_time()
        except psutil.NoSuchProcess:  # exited already; it was ours all the same
            create_time = time.time()
        record = RunRecord(
            kind=kind,
            job_id=job_id,
            attempt=attempt,
            export_id=export_id,
            pid=process.pid,
            sid=process.pid,
            pgid=process.pid,
            create_time=create_time,
            argv=tuple(invocation.argv),
            output_dir=invocation.output_dir,
            stdout_path=str(capture.stdout_path),
            stderr_path=str(capture.stderr_path),
            stdout_offset=capture.stdout_offset,
            stderr_offset=capture.stderr_offset,
            log_start_offset=log_start,
            gpu_ids=tuple(gpu_ids),
            reported_checkpoints=known_checkpoints,
            started_at=time.time(),
        )
        return record, process

    async def _begin(
        self,
        record: RunRecord,
        process: asyncio.subprocess.Process,
        *,
        job_reporter: JobReporter | None = None,
        export_reporter: ExportReporter | None = None,
    ) -> int:
        self.store.save(record)
        tree = ProcessTree(record.pid, record.sid, record.create_time, {})
        run = self._track(
            record,
            tree,
            process,
            job_reporter=job_reporter,
            export_reporter=export_reporter,
        )
        await report_safely(run.reporter.on_started(record.pid, record.argv), record)
        self._start_watch(run)
        return record.pid

    def _track(
        self,
        record: RunRecord,
        tree: ProcessTree,
        process: asyncio.subprocess.Process | None,
        *,
        job_reporter: JobReporter | None = None,
        export_reporter: ExportReporter | None = None,
    ) -> WatchedRun:
        run = WatchedRun(
            record,
            tree,
            process,
            tail_lines=self.stderr_tail_lines,
            progress_interval_s=self.progress_interval_s,
            job_reporter=job_reporter,
            export_reporter=export_reporter,
        )
        self._runs[record.key] = run
        if self.registry is not None:
            self.registry.track(record.key, record.pid, record.gpu_ids)
        return run

    def _start_watch(self, run: WatchedRun) -> None:
        if run.process is not None:
            run.wait_task = asyncio.create_task(run.process.wait())
        run.task = asyncio.create_task(self._supervise(run), name=f"supervise {run.record.key}")

    # --- watching -----------------------------------------------------------------------

    async def _supervise(self, run: WatchedRun) -> None:
        try:
            await monitor(run, self.timing, lambda: self._flush(run))
            await run.drain(final=True, persist=lambda: self._flush(run))
            faults = await self._faults_of(run)
            outcome: JobOutcome | ExportOutcome = run.decide(gpu_faults=faults)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.exception("supervision of %s failed; killing its processes", run.record.key)
            run.tree.signal(signal.SIGKILL)
            outcome = lost_track_outcome(
                run.record.kind, exc, exit_code=run.exit_code(), stderr_tail=run.stderr_text()
            )
        if isinstance(outcome, JobOutcome) and run.job_reporter is not None:
            await report_safely(run.job_reporter.on_finished(outcome), run.record)
        elif isinstance(outcome, ExportOutcome) and run.export_reporter is not None:
            await report_safely(run.export_reporter.on_finished(outcome), run.record)
        self.store.delete(run.record.key)
        if self.registry is not None:
            self.registry.untrack(run.record.key)
        self._runs.pop(run.record.key, None)
        if not run.done.done():
            run.done.set_result(outcome)

    async def _faults_of(self, run: WatchedRun) -> tuple[GpuFault, ...]:
        """What NVML saw on a failed job's GPUs; nothing for a clean exit or an export."""
        record = run.record
        if self.gpu_faults is None or record.kind != "job" or run.exit_code() == 0:
            return ()
        try:
            return await asyncio.to_thread(self.gpu_faults, record.gpu_ids, record.started_at)
        except Exception:
            _log.warning("cannot read the GPU health of %s", record.key, exc_info=True)
            return ()

    def _flush(self, run: WatchedRun) -> None:
        run.record.processes = dict(run.tree.known)
        if run.record.key in self._runs:
            try:
                self.store.save(run.record)
            except OSError as exc:
                _log.warning("cannot persist state of %s: %s", run.record.key, exc)
