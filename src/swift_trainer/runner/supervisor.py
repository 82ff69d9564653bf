"""Runs ``swift sft`` / ``swift export`` as supervised process trees on the GPU host.

Why it is built the way it is:

* Each run starts in its **own session** (``start_new_session=True``): the ``swift``
  launcher, torchrun, every trainer rank and their DataLoader workers share one session
  and process group, the handle for killing all of them. A stop first sends SIGTERM to
  the *trainers* only (``ProcessTree.trainers``): signalling the launcher would orphan
  the trainer (``swift/cli/main.py`` dies on SIGTERM without passing it on), torchrun
  SIGKILLs its ranks 30 s after its own SIGTERM, and a DataLoader worker killed by a
  signal crashes its rank before the graceful-exit checkpoint is written. The launcher
  and torchrun then exit on their own once the ranks have saved and finished. After the
  grace period every process still alive in the tree, the session or the group
  (remembered with its create time, so a reused pid is never hit) gets SIGKILL. No
  process of a stopped job survives.
* stdout/stderr go to **files** in the output folder, not pipes, and are tailed from there
  line by line (``\\n`` or tqdm's ``\\r``). A pipe would tie the trainer's life to the
  runner's: after a runner restart the next ``print`` would hit a closed pipe (SIGPIPE) and
  kill a healthy job. With files the job keeps running and a restarted runner re-attaches.
* Success needs **both** the log and the exit code: exit 0 without reaching the final step
  (or its summary line) is a failure, and a non-zero exit is a failure even after swift
  wrote its summary (it writes it even when it crashes while saving afterwards).
* Each run's pid, session, create time, argv, output folder and attempt are kept in a
  small JSON file in the runner's state folder, so ``reattach()`` after a restart resumes
  watching live runs (exit code unknown: the log decides) and reports vanished ones.

The NATS shell talks to this module only through ``Supervisor`` and the ``JobReporter`` /
``ExportReporter`` protocols; nothing here knows about the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import re
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final, Literal, Protocol

import msgspec
import psutil

from swift_trainer.core.errors import SwiftTrainerError

from .inventory import GpuProcessRegistry
from .swift_command import SwiftInvocation
from .training_log import (
    LOGGING_FILE,
    CheckpointWatcher,
    ProgressThrottle,
    TrainingLogReader,
    TrainingProgress,
    current_log_size,
    latest_checkpoint,
    merge_progress,
)

_log = logging.getLogger(__name__)
_MAX_LINE: Final = 8192
#: The limits of ``ReportFailed.stderr_tail`` and of a ``Reason`` in core.commands.
MAX_STDERR_TAIL_CHARS: Final = 65536
MAX_REASON_CHARS: Final = 4096
_TAIL_SEED_BYTES: Final = 64 * 1024
RUNNER_LOG_DIR: Final = "runner-logs"

Stream = Literal["stdout", "stderr"]


class LaunchError(SwiftTrainerError):
    """The process could not be started at all (missing executable, unwritable folder)."""

    code = "launch_failed"


class AlreadyRunning(SwiftTrainerError):
    code = "already_running"


# --- what the NATS shell receives ---------------------------------------------------------


class JobOutcome(msgspec.Struct, frozen=True, omit_defaults=True):
    status: Literal["succeeded", "failed", "stopped"]
    #: At most ``MAX_REASON_CHARS``, so it fits a core ``Reason``.
    reason: str
    #: None when the runner restarted in between and could not collect it.
    exit_code: int | None = None
    stderr_tail: str = ""
    final_step: int | None = None
    max_steps: int | None = None
    #: The newest complete checkpoint in the output folder (the one to resume or export).
    checkpoint: str | None = None
    output_path: str | None = None
    malformed_log_lines: int = 0


class ExportOutcome(msgspec.Struct, frozen=True, omit_defaults=True):
    status: Literal["succeeded", "failed", "stopped"]
    reason: str
    exit_code: int | None = None
    artifact_path: str | None = None
    stderr_tail: str = ""


class JobReporter(Protocol):
    """Callbacks of one training run; the NATS shell maps them to ``Report*`` commands."""

    async def on_started(self, pid: int, argv: tuple[str, ...]) -> None: ...

    async def on_progress(self, progress: TrainingProgress) -> None: ...

    async def on_checkpoint(self, step: int, path: str) -> None: ...

    async def on_log_line(self, stream: Stream, line: str) -> None: ...

    async def on_finished(self, outcome: JobOutcome) -> None: ...


class ExportReporter(Protocol):
    async def on_started(self, pid: int, argv: tuple[str, ...]) -> None: ...

    async def on_log_line(self, stream: Stream, line: str) -> None: ...

    async def on_finished(self, outcome: ExportOutcome) -> None: ...


# --- persisted state ----------------------------------------------------------------------


class RunRecord(msgspec.Struct, kw_only=True):
    """What a restarted runner needs to find and judge a run it did not start itself."""

    kind: Literal["job", "export"]
    job_id: str
    attempt: int = 0
    export_id: str | None = None
    pid: int
    sid: int
    #: The process group (the leader's pid, as is the session); 0 in older state files.
    pgid: int = 0
    create_time: float
    argv: tuple[str, ...]
    output_dir: str
    stdout_path: str
    stderr_path: str
    stdout_offset: int = 0
    stderr_offset: int = 0
    #: Where this attempt's lines start in a ``logging.jsonl`` shared with earlier attempts.
    log_start_offset: int = 0
    gpu_ids: tuple[int, ...] = ()
    reported_checkpoints: tuple[str, ...] = ()
    artifact_path: str | None = None
    stop_requested: bool = False
    started_at: float = 0.0
    #: Every process seen in the tree: pid -> create time.
    processes: dict[int, float] = {}

    @property
    def key(self) -> str:
        return run_key(self.kind, self.export_id if self.kind == "export" else self.job_id)


def run_key(kind: Literal["job", "export"], ident: str | None) -> str:
    return f"{kind}:{ident}"


def _file_name(key: str) -> str:
    """A state file name for any id: readable when safe, hashed otherwise."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{safe[:80]}-{digest}.json"


class RunStateStore:
    """One small JSON file per live run, replaced atomically so a crash never leaves half."""

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.state_dir / _file_name(key)

    def save(self, record: RunRecord) -> None:
        target = self.path(record.key)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(record))
        os.replace(tmp, target)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def load_all(self) -> list[RunRecord]:
        records = []
        for path in sorted(self.state_dir.glob("*.json")):
            try:
                records.append(msgspec.json.decode(path.read_bytes(), type=RunRecord))
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                _log.warning("ignoring unreadable run state %s: %s", path, exc)
                with contextlib.suppress(OSError):
                    path.rename(path.with_suffix(".corrupt"))
        return records


# --- process trees ------------------------------------------------------------------------


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie: an orphan's zombie waits for an init that may never reap."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _process(pid: int, create_time: float) -> psutil.Process | None:
    """The live process with this pid *and* create time; a reused pid is someone else."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 0.05:
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return proc if _alive(proc) else None


class ProcessTree:
    """Every process one run spawned, found through the tree and through the session.

    The tree alone misses trainer ranks once their parent (the launcher) has died and
    they were re-parented; the session alone misses a child that called ``setsid``.
    Processes are remembered with their create time as they are seen, so they can be
    signalled after their parent is gone.
    """

    def __init__(self, pid: int, sid: int, create_time: float, known: dict[int, float]) -> None:
        self.pid = pid
        self.sid = sid
        self.create_time = create_time
        self.known: dict[int, float] = {pid: create_time, **known}

    def _session_is_ours(self) -> bool:
        """A session id is a pid; once our leader is gone and its pid reused by a new
        session leader, that session is someone else's."""
        try:
            leader = psutil.Process(self.sid)
        except psutil.NoSuchProcess:
            return True
        try:
            return abs(leader.create_time() - self.create_time) <= 0.05 or self.sid != self.pid
        except psutil.NoSuchProcess:
            return True

    def _session_members(self) -> list[psutil.Process]:
        if not self._session_is_ours():
            return []
        members = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == self.sid and _alive(proc):
                    members.append(proc)
            except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
                continue
        return members

    def _remember(self, proc: psutil.Process) -> None:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            self.known.setdefault(proc.pid, proc.create_time())

    def refresh(self) -> None:
        leader = _process(self.pid, self.create_time)
        if leader is not None:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                for child in leader.children(recursive=True):
                    self._remember(child)
        for member in self._session_members():
            self._remember(member)

    def leader_alive(self) -> bool:
        return _process(self.pid, self.create_time) is not None

    def alive(self) -> list[psutil.Process]:
        found: dict[int, psutil.Process] = {}
        for pid, created in list(self.known.items()):
            proc = _process(pid, created)
            if proc is not None:
                found[pid] = proc
        for member in self._session_members():
            found.setdefault(member.pid, member)
            self._remember(member)
        return list(found.values())

    def trainers(self) -> list[psutil.Process]:
        """The processes that run the training script: the ones to ask for a graceful stop.

        Walking down from the launcher through exec'd children (a child whose command line
        differs from its parent's), launchers are passed through: the run's leader when it
        started a program of its own (``swift`` runs ``sft.py``), and torchrun. Their
        first exec'd descendant that is not a launcher is a trainer. That skips the
        launcher (it dies on SIGTERM and orphans its child), torchrun (it SIGKILLs its
        ranks 30 s after its own SIGTERM, whatever they are saving), the ranks' forked
        DataLoader workers (one killed by a signal makes its rank raise "DataLoader worker
        exited unexpectedly" before the checkpoint is written) and anything a rank runs
        itself (compiler workers). Orphans whose parent is gone are walked from where
        they are.
        """
        procs = {p.pid: p for p in self.alive()}
        found: list[psutil.Process] = []

        def execd_children(
            proc: psutil.Process, command: tuple[str, ...] | None
        ) -> list[psutil.Process]:
            try:
                children = proc.children()
            except psutil.NoSuchProcess:
                return []
            result = []
            for child in children:
                child_command = _cmdline(child)
                if child.pid not in procs or child_command is None or child_command == command:
                    continue
                if not _is_multiprocessing_helper(child_command):
                    result.append(child)
            return result

        def visit(proc: psutil.Process, is_leader: bool) -> None:
            command = _cmdline(proc)
            children = execd_children(proc, command)
            if command is not None and (_is_launcher(command) or (is_leader and children)):
                for child in children:
                    visit(child, is_leader=False)
            elif command is not None:
                found.append(proc)

        for proc in procs.values():
            try:
                parent = proc.ppid()
            except psutil.NoSuchProcess:
                continue
            if parent not in procs:
                visit(proc, is_leader=proc.pid == self.pid)
        return found

    def signal(self, signum: int, *, trainers_only: bool = False) -> list[int]:
        """Signal the trainers, or every live process youngest (deepest) first and then
        the process group; returns the pids signalled."""
        self.refresh()
        targets = self.trainers() if trainers_only else []
        if not targets:
            targets = self.alive()
            trainers_only = False

        def age(proc: psutil.Process) -> float:
            return self.known.get(proc.pid, 0.0)

        signalled = []
        for proc in sorted(targets, key=age, reverse=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                proc.send_signal(signum)
                signalled.append(proc.pid)
        if not trainers_only and self._session_is_ours():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.sid, signum)
        return signalled


def _cmdline(proc: psutil.Process) -> tuple[str, ...] | None:
    try:
        return tuple(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _cmdline_of(pid: int) -> tuple[str, ...] | None:
    try:
        return _cmdline(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return None


_LAUNCHER_MARKERS: Final = ("torch.distributed.run", "torchrun", "torch.distributed.launch")


def _is_launcher(command: tuple[str, ...]) -> bool:
    return any(marker in part for part in command[:4] for marker in _LAUNCHER_MARKERS)


def _is_multiprocessing_helper(command: tuple[str, ...]) -> bool:
    """Spawned (not forked) DataLoader workers and multiprocessing's own helpers."""
    text = " ".join(command)
    return (
        "multiprocessing.spawn" in text
        or "multiprocessing.resource_tracker" in text
        or ("multiprocessing.forkserver" in text)
    )


# --- output files -------------------------------------------------------------------------


class LineTail:
    """Complete lines appended to a file since the last call; ``\\r`` ends a line too,
    because tqdm redraws its bar with carriage returns and never writes a newline."""

    _SPLIT: Final = re.compile(rb"\r\n|\r|\n")

    def __init__(self, path: str | Path, offset: int = 0) -> None:
        self.path = Path(path)
        self.offset = offset
        self._partial = b""

    def poll(self) -> list[str]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        if not data:
            return []
        self.offset += len(data)
        parts = self._SPLIT.split(self._partial + data)
        self._partial = parts.pop()
        if len(self._partial) > _MAX_LINE:  # a line that never ends is cut, not hoarded
            parts.append(self._partial)
            self._partial = b""
        return [self._decode(p) for p in parts if p.strip()]

    def finish(self) -> list[str]:
        lines = self.poll()
        if self._partial.strip():
            lines.append(self._decode(self._partial))
        self._partial = b""
        return lines

    @staticmethod
    def _decode(raw: bytes) -> str:
        return raw[:_MAX_LINE].decode("utf-8", "replace").rstrip()


def _seed_tail(path: str, offset: int, lines: int) -> list[str]:
    """The last lines before ``offset``, to rebuild the stderr tail after a restart."""
    try:
        with open(path, "rb") as handle:
            start = max(offset - _TAIL_SEED_BYTES, 0)
            handle.seek(start)
            data = handle.read(offset - start)
    except FileNotFoundError:
        return []
    text = [LineTail._decode(p) for p in LineTail._SPLIT.split(data) if p.strip()]
    return text[-lines:]


class _CaptureFiles:
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


def _clip(reason: str) -> str:
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    return reason[: MAX_REASON_CHARS - 1] + "\u2026"


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


# --- a supervised run ---------------------------------------------------------------------


class _Run:
    def __init__(
        self,
        record: RunRecord,
        tree: ProcessTree,
        process: asyncio.subprocess.Process | None,
        *,
        tail_lines: int,
        progress_interval_s: float,
        job_reporter: JobReporter | None = None,
        export_reporter: ExportReporter | None = None,
    ) -> None:
        self.record = record
        self.job_reporter = job_reporter
        self.export_reporter = export_reporter
        self.tree = tree
        self.process = process
        self.stdout = LineTail(record.stdout_path, record.stdout_offset)
        self.stderr = LineTail(record.stderr_path, record.stderr_offset)
        self.stderr_tail: deque[str] = deque(
            _seed_tail(record.stderr_path, record.stderr_offset, tail_lines),
            maxlen=tail_lines,
        )
        self.log = TrainingLogReader(
            Path(record.output_dir) / LOGGING_FILE,
            start_offset=record.log_start_offset,
        )
        self.checkpoints = CheckpointWatcher(record.output_dir, known=record.reported_checkpoints)
        self.throttle = ProgressThrottle(progress_interval_s)
        self.progress: TrainingProgress | None = None
        self.stop_event = asyncio.Event()
        if record.stop_requested:
            self.stop_event.set()
        self.done: asyncio.Future[JobOutcome | ExportOutcome] = (
            asyncio.get_running_loop().create_future()
        )
        self.task: asyncio.Task[None] | None = None
        self.wait_task: asyncio.Task[int] | None = None
        self.unkillable: list[int] = []
        self.grace_period_s: float | None = None

    @property
    def reporter(self) -> JobReporter | ExportReporter:
        reporter = self.job_reporter or self.export_reporter
        assert reporter is not None
        return reporter

    def exit_code(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    def leader_exited(self) -> bool:
        if self.process is not None:
            return self.process.returncode is not None
        return not self.tree.leader_alive()


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
        poll_interval_s: float = 0.5,
        progress_interval_s: float = 5.0,
        tree_refresh_s: float = 2.0,
        state_flush_s: float = 5.0,
        stderr_tail_lines: int = 50,
        process_registry: GpuProcessRegistry | None = None,
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
        self._runs: dict[str, _Run] = {}

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
            stem=f"export-{_file_name(export_id)[:-5]}",
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
        """Pids of every live process of every run: the "ours" in foreign-usage checks."""
        pids: set[int] = set()
        for run in self._runs.values():
            run.tree.refresh()
            pids.update(proc.pid for proc in run.tree.alive())
        return pids

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
        capture = _CaptureFiles(log_dir, stem)
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
        await self._call(run.reporter.on_started(record.pid, record.argv), record)
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
    ) -> _Run:
        run = _Run(
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

    def _start_watch(self, run: _Run) -> None:
        if run.process is not None:
            run.wait_task = asyncio.create_task(run.process.wait())
        run.task = asyncio.create_task(self._supervise(run), name=f"supervise {run.record.key}")

    # --- watching -----------------------------------------------------------------------

    async def _call(self, awaitable: Awaitable[None], record: RunRecord) -> None:
        """A failing reporter (bus down) must not take the supervision of a job with it."""
        try:
            await awaitable
        except Exception:
            _log.exception("reporter failed for %s", record.key)

    async def _supervise(self, run: _Run) -> None:
        try:
            await self._monitor(run)
            await self._drain(run, final=True)
            outcome: JobOutcome | ExportOutcome = self._decide(run)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.exception("supervision of %s failed; killing its processes", run.record.key)
            run.tree.signal(signal.SIGKILL)
            outcome = self._error_outcome(run, exc)
        if isinstance(outcome, JobOutcome) and run.job_reporter is not None:
            await self._call(run.job_reporter.on_finished(outcome), run.record)
        elif isinstance(outcome, ExportOutcome) and run.export_reporter is not None:
            await self._call(run.export_reporter.on_finished(outcome), run.record)
        self.store.delete(run.record.key)
        if self.registry is not None:
            self.registry.untrack(run.record.key)
        self._runs.pop(run.record.key, None)
        if not run.done.done():
            run.done.set_result(outcome)

    async def _monitor(self, run: _Run) -> None:
        loop = asyncio.get_running_loop()
        term_sent = False
        exited = False
        deadline: float | None = None
        killed_at: float | None = None
        next_refresh = 0.0
        next_flush = loop.time() + self.state_flush_s
        while True:
            await self._drain(run, final=False)
            now = loop.time()
            if now >= next_refresh:
                run.tree.refresh()
                next_refresh = now + self.tree_refresh_s
            if now >= next_flush:
                self._flush(run)
                next_flush = now + self.state_flush_s
            if run.stop_event.is_set() and not term_sent:
                term_sent = True
                signalled = run.tree.signal(signal.SIGTERM, trainers_only=True)
                _log.info("stop %s: SIGTERM to trainers %s", run.record.key, signalled)
                grace = run.grace_period_s
                deadline = now + (self.grace_period_s if grace is None else grace)
            if not exited and run.leader_exited():
                exited = True
                if deadline is None:
                    deadline = now + self.orphan_grace_s
            if exited:
                remaining = run.tree.alive()
                if not remaining:
                    return
                if killed_at is not None and now - killed_at > 10.0:
                    run.unkillable = [p.pid for p in remaining]
                    _log.error("%s: processes survive SIGKILL: %s", run.record.key, run.unkillable)
                    return
            if deadline is not None and now >= deadline and killed_at is None:
                signalled = run.tree.signal(signal.SIGKILL)
                _log.warning("%s: SIGKILL to %s after the grace period", run.record.key, signalled)
                killed_at = now
            await self._sleep(run)

    async def _sleep(self, run: _Run) -> None:
        waiters: set[asyncio.Future[object]] = set()
        stop = asyncio.ensure_future(run.stop_event.wait())
        waiters.add(stop)  # type: ignore[arg-type]
        if run.wait_task is not None and not run.wait_task.done():
            waiters.add(run.wait_task)  # type: ignore[arg-type]
        try:
            await asyncio.wait(waiters, timeout=self.poll_interval_s, return_when="FIRST_COMPLETED")
        finally:
            stop.cancel()

    async def _drain(self, run: _Run, *, final: bool) -> None:
        tails: tuple[tuple[Stream, LineTail], ...] = (
            ("stdout", run.stdout),
            ("stderr", run.stderr),
        )
        for stream, tail in tails:
            lines = tail.finish() if final else tail.poll()
            for line in lines:
                if stream == "stderr":
                    run.stderr_tail.append(line)
                await self._call(run.reporter.on_log_line(stream, line), run.record)
        run.record.stdout_offset, run.record.stderr_offset = run.stdout.offset, run.stderr.offset
        job_reporter = run.job_reporter
        if job_reporter is None:
            return
        records = run.log.finish() if final else run.log.poll()
        for record in records:
            if isinstance(record, TrainingProgress):
                run.progress = merge_progress(run.progress, record)
                ready = run.throttle.offer(run.progress)
            else:
                ready = None
            if ready is not None:
                await self._call(job_reporter.on_progress(ready), run.record)
        due = run.throttle.flush() if final else run.throttle.due()
        if due is not None:
            await self._call(job_reporter.on_progress(due), run.record)
        new = run.checkpoints.scan()
        for checkpoint in new:
            await self._call(
                job_reporter.on_checkpoint(checkpoint.step, checkpoint.path), run.record
            )
        if new:
            run.record.reported_checkpoints = tuple(sorted(run.checkpoints.known))
            self._flush(run)

    def _flush(self, run: _Run) -> None:
        run.record.processes = dict(run.tree.known)
        if run.record.key in self._runs:
            try:
                self.store.save(run.record)
            except OSError as exc:
                _log.warning("cannot persist state of %s: %s", run.record.key, exc)

    # --- deciding -----------------------------------------------------------------------

    def _tail(self, run: _Run) -> str:
        """The last lines of stderr, cut from the front to fit a ``ReportFailed``."""
        return "\n".join(run.stderr_tail)[-MAX_STDERR_TAIL_CHARS:]

    def _decide(self, run: _Run) -> JobOutcome | ExportOutcome:
        if run.record.kind == "export":
            return self._decide_export(run)
        return self._decide_job(run)

    def _exit_text(self, code: int | None) -> str:
        if code is None:
            return "its exit code is unknown (the runner restarted while it ran)"
        if code < 0:
            return f"it was killed by {_signal_name(code)}"
        return f"it exited with code {code}"

    def _decide_job(self, run: _Run) -> JobOutcome:
        log = run.log
        code = run.exit_code()
        checkpoint = latest_checkpoint(run.record.output_dir)
        step, max_steps = log.last_step, log.max_steps
        failed = JobOutcome(
            status="failed",
            reason="",
            exit_code=code,
            stderr_tail=self._tail(run),
            final_step=step,
            max_steps=max_steps,
            checkpoint=checkpoint.path if checkpoint else None,
            malformed_log_lines=log.malformed_lines,
        )
        progress = f"step {step} of {max_steps}" if step is not None else "no training step"
        if run.record.stop_requested:
            where = f"last checkpoint {checkpoint.path}" if checkpoint else "no checkpoint yet"
            reason = f"stopped on request at {progress}; {where}"
            return msgspec.structs.replace(failed, status="stopped", reason=_clip(reason))
        summary = log.summary
        finished = summary is not None and (
            summary.reached_final_step or (summary.step is None and log.reached_final_step)
        )
        if code in (0, None) and finished:
            reason = "training reached its final step"
            if code is None:
                reason += " (exit code unknown after a runner restart; judged from its log)"
            return msgspec.structs.replace(
                failed,
                status="succeeded",
                reason=reason,
                output_path=checkpoint.path if checkpoint else run.record.output_dir,
            )
        if code == 0:
            reason = f"swift exited with code 0 but training ended at {progress}"
            if summary is None:
                reason += " without its final summary line"
        elif code is None:
            reason = f"the process vanished at {progress}; {self._exit_text(code)}"
        else:
            reason = f"swift failed at {progress}: {self._exit_text(code)}"
            if summary is not None:
                reason += " after writing its final summary (a crash while finishing)"
        if run.unkillable:
            reason += f"; processes {run.unkillable} survived SIGKILL"
        return msgspec.structs.replace(failed, reason=_clip(reason))

    def _decide_export(self, run: _Run) -> ExportOutcome:
        code = run.exit_code()
        artifact = run.record.artifact_path
        exists = artifact is not None and (Path(artifact) / "config.json").is_file()
        tail = self._tail(run)
        if run.record.stop_requested:
            return ExportOutcome(
                status="stopped",
                reason="export stopped on request",
                exit_code=code,
                stderr_tail=tail,
            )
        if code in (0, None) and exists:
            return ExportOutcome(
                status="succeeded",
                reason="merged model written",
                exit_code=code,
                artifact_path=artifact,
                stderr_tail=tail,
            )
        if code == 0:
            reason = f"swift export exited with code 0 but wrote no model to {artifact}"
        else:
            reason = f"swift export failed: {self._exit_text(code)}"
        return ExportOutcome(
            status="failed",
            reason=_clip(reason),
            exit_code=code,
            stderr_tail=tail,
        )

    def _error_outcome(self, run: _Run, exc: Exception) -> JobOutcome | ExportOutcome:
        reason = _clip(f"the runner lost track of the process: {type(exc).__name__}: {exc}")
        if run.record.kind == "export":
            return ExportOutcome(status="failed", reason=reason, exit_code=run.exit_code())
        return JobOutcome(
            status="failed",
            reason=reason,
            exit_code=run.exit_code(),
            stderr_tail=self._tail(run),
        )
