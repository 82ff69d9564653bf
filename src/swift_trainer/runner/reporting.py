"""From supervisor callbacks to core commands, delivered in order even across NATS outages.

The supervisor calls ``JobReporter`` / ``ExportReporter`` methods. ``OutboxJobReporter``
and ``OutboxExportReporter`` turn them into ``Report*`` commands (actor: the runner id).
They hand them to the ``ReportOutbox``, which sends them through ``CommandClient``:

* **Per job, in order.** One lane per job id; a lane sends one command at a time, so the
  handler sees ``ReportStarted`` before the job's progress, and its outcome last.
* **Retried with the same command id** while no handler answers (``CommandUnavailable``)
  or the handler reports a transient store problem. The handler deduplicates by command id,
  so a retry after a lost reply is recorded once.
* **Progress is coalesced:** a new ``ReportProgress`` replaces one still waiting in its
  lane (progress is a snapshot; only the newest matters), so an outage leaves one pending
  progress per job, not thousands.
* **Everything else is durable:** started, checkpoint, outcome and export reports are
  written to a small file before the callback returns and removed once the handler has
  answered. A runner killed right after a job ended (the supervisor has already deleted
  the run's state by then) still reports the outcome when it starts again.
* **Refusals go back to the agent** (``on_refused``): ``stale_assignment`` means the job
  was given to someone else after this runner's lease expired, and its process must stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Final

import msgspec

from ..bus.command_client import CommandClient
from ..bus.messages import ReplyError
from ..core import commands as c
from ..core import events as e
from ..core.atomic_file import write_atomic
from ..core.ids import new_id
from ..core.limits import MAX_REASON_CHARS
from ..core.progress import MetricSample
from ..core.tasks import cancel_and_wait
from .evaluation import EvalReport
from .log_publisher import LogPublisher
from .outcome import ExportOutcome, JobOutcome
from .run_state import RunRecord, run_key
from .run_watch import Stream
from .supervisor import Supervisor
from .training_log import TrainingProgress

_log = logging.getLogger(__name__)

#: Handler answers that mean "nothing was recorded, try again" rather than "refused".
TRANSIENT_ERRORS: Final = frozenset(
    {"store_error", "concurrency_conflict", "internal_error", "command_unavailable"},
)
#: How often a transient handler error is retried before the report is given up.
MAX_TRANSIENT_RETRIES: Final = 20

Refused = Callable[[c.AnyJobCommand, ReplyError], Awaitable[None]]


class _Stored(msgspec.Struct, frozen=True):
    seq: int
    command_id: str
    command: c.AnyJobCommand


class _Item:
    __slots__ = ("command", "command_id", "path", "seq")

    def __init__(self, seq: int, command_id: str, command: c.AnyJobCommand, path: Path | None):
        self.seq = seq
        self.command_id = command_id
        self.command = command
        self.path = path


class _Lane:
    __slots__ = ("items", "task")

    def __init__(self) -> None:
        self.items: deque[_Item] = deque()
        self.task: asyncio.Task[None] | None = None


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:120]


class ReportOutbox:
    """Ordered, retried, partly durable delivery of runner reports (see module doc)."""

    def __init__(
        self,
        client: CommandClient,
        directory: str | Path,
        *,
        on_refused: Refused | None = None,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
    ) -> None:
        self.client = client
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.on_refused = on_refused
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.sent = 0
        self.refused = 0
        self._lanes: dict[str, _Lane] = {}
        self._seq = 0
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    # --- submitting ---------------------------------------------------------------------

    def submit(
        self,
        command: c.AnyJobCommand,
        *,
        command_id: str | None = None,
        durable: bool | None = None,
    ) -> str:
        """Queue a report; returns its command id. Progress is coalesced and not durable."""
        is_progress = isinstance(command, c.ReportProgress)
        durable = (not is_progress) if durable is None else durable
        command_id = command_id or new_id()
        self._seq += 1
        path = self._persist(self._seq, command_id, command) if durable else None
        lane = self._lanes.setdefault(command.job_id, _Lane())
        if is_progress:
            # The head is in flight while the lane's task runs; only waiting ones go.
            in_flight = lane.items[0] if lane.task is not None and lane.items else None
            for item in [i for i in lane.items if isinstance(i.command, c.ReportProgress)]:
                if item is not in_flight:
                    lane.items.remove(item)
        lane.items.append(_Item(self._seq, command_id, command, path))
        self._kick(command.job_id, lane)
        return command_id

    def _persist(self, seq: int, command_id: str, command: c.AnyJobCommand) -> Path | None:
        path = self.directory / f"{seq:012d}-{_safe(command_id)}.json"
        try:
            write_atomic(path, msgspec.json.encode(_Stored(seq, command_id, command)))
        except OSError as exc:  # a full disk must not stop the report from going out now
            _log.error("cannot persist report %s: %s", command_id, exc)
            return None
        return path

    def load(self) -> int:
        """Queue the reports a previous run of this runner left undelivered, in order."""
        stored: list[tuple[_Stored, Path]] = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                stored.append((msgspec.json.decode(path.read_bytes(), type=_Stored), path))
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                _log.warning("dropping unreadable stored report %s: %s", path, exc)
                with contextlib.suppress(OSError):
                    path.unlink()
        for tmp in self.directory.glob("*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
        stored.sort(key=lambda pair: pair[0].seq)
        for record, path in stored:
            self._seq = max(self._seq, record.seq)
            lane = self._lanes.setdefault(record.command.job_id, _Lane())
            lane.items.append(_Item(record.seq, record.command_id, record.command, path))
        for job_id, lane in self._lanes.items():
            self._kick(job_id, lane)
        return len(stored)

    # --- sending ------------------------------------------------------------------------

    def _kick(self, job_id: str, lane: _Lane) -> None:
        if self._closing or lane.task is not None or not lane.items:
            return
        self._idle.clear()
        lane.task = asyncio.create_task(self._drain_lane(job_id, lane), name=f"reports {job_id}")

    async def _drain_lane(self, job_id: str, lane: _Lane) -> None:
        try:
            while lane.items:
                item = lane.items[0]
                await self._deliver(item)
                if lane.items and lane.items[0] is item:
                    lane.items.popleft()
                if item.path is not None:
                    with contextlib.suppress(OSError):
                        item.path.unlink()
        finally:
            lane.task = None
            if not lane.items:
                self._lanes.pop(job_id, None)
            if not self._lanes:
                self._idle.set()

    async def _deliver(self, item: _Item) -> None:
        """Send until the handler answers; a refusal is handed to ``on_refused``."""
        delay = self.retry_initial_s
        transient = 0
        name = type(item.command).__name__
        while True:
            try:
                reply = await self.client.send(item.command, command_id=item.command_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no handler, NATS away, reconnecting: all retryable
                _log.info("%s %s not delivered (%s); retrying", name, item.command_id, exc)
            else:
                error = reply.error
                if error is None:
                    self.sent += 1
                    return
                if error.code not in TRANSIENT_ERRORS or transient >= MAX_TRANSIENT_RETRIES:
                    self.refused += 1
                    await self._refused(item.command, error)
                    return
                transient += 1
                _log.warning("%s %s: %s; retrying", name, item.command_id, error.message)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_s)

    async def _refused(self, command: c.AnyJobCommand, error: ReplyError) -> None:
        level = logging.WARNING if error.code == "stale_assignment" else logging.INFO
        _log.log(level, "%s for job %s refused: %s", type(command).__name__, command.job_id, error)
        if self.on_refused is not None:
            try:
                await self.on_refused(command, error)
            except Exception:
                _log.exception("handling the refusal of %s failed", type(command).__name__)

    # --- lifecycle ----------------------------------------------------------------------

    def undelivered_attempts(self) -> set[tuple[str, int]]:
        """The job attempts with a report still waiting to be answered."""
        return {
            (item.command.job_id, item.command.attempt)
            for lane in self._lanes.values()
            for item in lane.items
            if isinstance(item.command, c.RunnerReport)
        }

    def pending(self, job_id: str | None = None) -> int:
        if job_id is not None:
            lane = self._lanes.get(job_id)
            return len(lane.items) if lane else 0
        return sum(len(lane.items) for lane in self._lanes.values())

    async def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued report is answered; False when the time ran out."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop sending; durable reports still unanswered stay on disk for the next start."""
        self._closing = True
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in tasks:
            await cancel_and_wait(task)


# --- the reporters the supervisor calls -------------------------------------------------------


def started_command_id(job_id: str, attempt: int, pid: int, create_time: float) -> str:
    """The same id every time a given process is reported as started: a runner that
    re-reports its runs after a restart is then deduplicated by the handler. The process's
    create time tells two incarnations of a job id (deleted and submitted again) apart."""
    return f"started-{job_id}-{attempt}-{pid}-{round(create_time * 1000)}"


def export_started_command_id(export_id: str, pid: int, create_time: float) -> str:
    return f"export-started-{export_id}-{pid}-{round(create_time * 1000)}"


class OutboxJobReporter:
    """The ``JobReporter`` of one attempt on this runner: it reports through the outbox."""

    def __init__(
        self,
        *,
        job_id: str,
        attempt: int,
        runner_id: str,
        outbox: ReportOutbox,
        logs: LogPublisher | None,
        started_id: Callable[[int], str] | None = None,
        on_finished: Callable[[JobOutcome], None] | None = None,
        evaluate: Callable[[JobOutcome], Awaitable[EvalReport]] | None = None,
        warnings: tuple[str, ...] = (),
        tracker_urls: Mapping[str, str] | None = None,
        rank: int | None = None,
        before_outcome: Callable[[JobOutcome], Awaitable[None]] | None = None,
    ) -> None:
        #: What was changed to start the run, and where trackers show it; sent with the start.
        self.warnings = tuple(w[:MAX_REASON_CHARS] for w in warnings)
        self.tracker_urls = dict(tracker_urls or {})
        self.job_id = job_id
        #: The evaluation after a successful training, run before the success is reported.
        self.evaluate = evaluate
        self.attempt = attempt
        self.runner_id = runner_id
        self.outbox = outbox
        self.logs = logs
        #: The rank of a multi-node job this run is, marked on each of its log lines.
        self.rank = rank
        self._started_id = started_id
        self._on_finished = on_finished
        #: Awaited before the outcome is reported (the agent heartbeats a GPU fault first).
        self._before_outcome = before_outcome

    async def on_started(self, pid: int, argv: tuple[str, ...]) -> None:
        command = c.ReportStarted(
            job_id=self.job_id,
            attempt=self.attempt,
            runner_id=self.runner_id,
            pid=pid,
            command=argv,
            warnings=self.warnings,
            tracker_urls=self.tracker_urls,
        )
        command_id = self._started_id(pid) if self._started_id is not None else None
        self.outbox.submit(command, command_id=command_id)

    async def on_progress(
        self, progress: TrainingProgress, earlier: tuple[MetricSample, ...] = ()
    ) -> None:
        fields = msgspec.structs.asdict(progress)
        self.outbox.submit(
            c.ReportProgress(
                job_id=self.job_id,
                attempt=self.attempt,
                runner_id=self.runner_id,
                earlier=earlier,
                **fields,
            ),
        )

    async def on_checkpoint(self, step: int, path: str) -> None:
        self.outbox.submit(
            c.ReportCheckpoint(
                job_id=self.job_id,
                attempt=self.attempt,
                runner_id=self.runner_id,
                step=step,
                path=path,
            ),
        )

    async def on_checkpoints_removed(self, paths: tuple[str, ...]) -> None:
        self.outbox.submit(
            c.ReportCheckpointsRemoved(
                job_id=self.job_id,
                attempt=self.attempt,
                runner_id=self.runner_id,
                paths=paths,
                reason="no longer on disk",
            ),
        )

    async def on_log_line(self, stream: Stream, line: str) -> None:
        if self.logs is not None:
            self.logs.publish(self.job_id, self.attempt, stream, line, rank=self.rank)

    async def on_finished(self, outcome: JobOutcome) -> None:
        command = outcome_command(outcome, self.job_id, self.attempt, self.runner_id)
        if isinstance(command, c.ReportSucceeded) and self.evaluate is not None:
            try:
                report = await self.evaluate(outcome)
            except Exception as exc:  # an evaluation never fails the training
                _log.exception("evaluation of %s failed", self.job_id)
                report = EvalReport(error=f"evaluation failed: {exc!r}"[:MAX_REASON_CHARS])
            command = msgspec.structs.replace(
                command,
                eval_results=report.results,
                eval_error=report.error,
                eval_model=report.model,
            )
        if self._before_outcome is not None:
            try:
                await self._before_outcome(outcome)
            except Exception:  # the outcome is reported whatever happened before it
                _log.exception("preparing the outcome report of %s failed", self.job_id)
        self.outbox.submit(command)
        if self._on_finished is not None:
            self._on_finished(outcome)


def outcome_command(
    outcome: JobOutcome, job_id: str, attempt: int, runner_id: str
) -> c.ReportSucceeded | c.ReportFailed | c.ReportStopped:
    if outcome.status == "succeeded":
        return c.ReportSucceeded(
            job_id=job_id,
            attempt=attempt,
            runner_id=runner_id,
            final_step=outcome.final_step,
            output_path=outcome.output_path,
        )
    if outcome.status == "stopped":
        return c.ReportStopped(
            job_id=job_id, attempt=attempt, runner_id=runner_id, checkpoint=outcome.checkpoint
        )
    return c.ReportFailed(
        job_id=job_id,
        attempt=attempt,
        runner_id=runner_id,
        exit_code=outcome.exit_code,
        reason=outcome.reason,
        stderr_tail=outcome.stderr_tail,
        failure=outcome.failure,
    )


class OutboxExportReporter:
    """The ``ExportReporter`` of one ``swift export`` run: it reports through the outbox."""

    def __init__(
        self,
        *,
        job_id: str,
        export_id: str,
        runner_id: str,
        outbox: ReportOutbox,
        logs: LogPublisher | None,
        started_id: Callable[[int], str] | None = None,
    ) -> None:
        self.job_id = job_id
        self.export_id = export_id
        self.runner_id = runner_id
        self.outbox = outbox
        self.logs = logs
        self._started_id = started_id

    async def on_started(self, pid: int, argv: tuple[str, ...]) -> None:
        command_id = self._started_id(pid) if self._started_id is not None else None
        self.outbox.submit(
            c.ReportExportStarted(
                job_id=self.job_id,
                export_id=self.export_id,
                runner_id=self.runner_id,
                pid=pid,
                command=argv,
            ),
            command_id=command_id,
        )

    async def on_log_line(self, stream: Stream, line: str) -> None:
        if self.logs is not None:
            self.logs.publish(self.job_id, 0, stream, line, export_id=self.export_id)

    async def on_finished(self, outcome: ExportOutcome) -> None:
        if outcome.status == "succeeded" and outcome.artifact_path is not None:
            self.outbox.submit(
                c.ReportExportSucceeded(
                    job_id=self.job_id,
                    export_id=self.export_id,
                    runner_id=self.runner_id,
                    artifact_path=outcome.artifact_path,
                ),
            )
            return
        self.outbox.submit(
            c.ReportExportFailed(
                job_id=self.job_id,
                export_id=self.export_id,
                runner_id=self.runner_id,
                exit_code=outcome.exit_code,
                reason=export_failure_reason(outcome),
            ),
        )


def export_failure_reason(outcome: ExportOutcome, limit: int = MAX_REASON_CHARS) -> str:
    """The supervisor's reason plus the last stderr lines (the traceback's last line says
    what went wrong), cut to fit a core ``Reason``."""
    reason = outcome.reason
    lines = [line for line in outcome.stderr_tail.splitlines() if line.strip()]
    if lines:
        reason += ": " + " | ".join(lines[-3:])
    if len(reason) > limit:
        reason = reason[: limit - 1] + "\u2026"
    return reason


class ReporterFactory:
    """Builds the reporter of each run (``OutboxJobReporter``, ``OutboxExportReporter``).

    A start's command id carries the process's create time, so a re-sent start is
    deduplicated."""

    def __init__(
        self,
        *,
        runner_id: str,
        outbox: ReportOutbox,
        logs: LogPublisher,
        supervisor: Supervisor,
        before_outcome: Callable[[JobOutcome], Awaitable[None]] | None = None,
    ) -> None:
        self.runner_id = runner_id
        self.outbox = outbox
        self.logs = logs
        self.supervisor = supervisor
        #: Awaited before each job outcome is reported (``OutboxJobReporter.before_outcome``).
        self.before_outcome = before_outcome

    def job(
        self,
        job_id: str,
        attempt: int,
        evaluate: Callable[[JobOutcome], Awaitable[EvalReport]] | None = None,
        *,
        warnings: tuple[str, ...] = (),
        tracker_urls: Mapping[str, str] | None = None,
        rank: int | None = None,
    ) -> OutboxJobReporter:
        key = run_key("job", job_id)

        def started_id(pid: int) -> str:
            record = next((r for r in self.supervisor.running() if r.key == key), None)
            created = record.create_time if record is not None and record.pid == pid else 0.0
            return started_command_id(job_id, attempt, pid, created)

        return OutboxJobReporter(
            job_id=job_id,
            attempt=attempt,
            runner_id=self.runner_id,
            outbox=self.outbox,
            logs=self.logs,
            started_id=started_id,
            evaluate=evaluate,
            warnings=warnings,
            tracker_urls=tracker_urls,
            rank=rank,
            before_outcome=self.before_outcome,
        )

    def export(self, event: e.ExportRequested) -> OutboxExportReporter:
        key = run_key("export", event.export_id)

        def started_id(pid: int) -> str:
            record = next((r for r in self.supervisor.running() if r.key == key), None)
            created = record.create_time if record is not None and record.pid == pid else 0.0
            return export_started_command_id(event.export_id, pid, created)

        return OutboxExportReporter(
            job_id=event.job_id,
            export_id=event.export_id,
            runner_id=self.runner_id,
            outbox=self.outbox,
            logs=self.logs,
            started_id=started_id,
        )

    def reattached_job(self, record: RunRecord) -> OutboxJobReporter:
        """Reporter of a run found after a restart; it is reported as started again first
        (deduplicated by its command id), since that report may be what the crash lost."""
        reports = self.job(record.job_id, record.attempt)
        self.outbox.submit(
            c.ReportStarted(
                job_id=record.job_id,
                attempt=record.attempt,
                runner_id=self.runner_id,
                pid=record.pid,
                command=record.argv,
            ),
            command_id=started_command_id(
                record.job_id, record.attempt, record.pid, record.create_time
            ),
        )
        return reports

    def reattached_export(self, record: RunRecord) -> OutboxExportReporter:
        export_id = record.export_id or ""
        reports = OutboxExportReporter(
            job_id=record.job_id,
            export_id=export_id,
            runner_id=self.runner_id,
            outbox=self.outbox,
            logs=self.logs,
        )
        self.outbox.submit(
            c.ReportExportStarted(
                job_id=record.job_id,
                export_id=export_id,
                runner_id=self.runner_id,
                pid=record.pid,
                command=record.argv,
            ),
            command_id=export_started_command_id(export_id, record.pid, record.create_time),
        )
        return reports
