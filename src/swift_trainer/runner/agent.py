"""The runner agent: the NATS shell around the supervisor on one GPU host.

It heartbeats its GPU inventory into the runners' KV bucket, consumes the start, stop and
export events addressed to it from a durable pull consumer (acknowledged once acted on;
redelivery is harmless: handled ids are kept on disk and a repeated start gets the same
pid back), starts ``swift sft`` / ``swift export`` under the supervisor, and sends every
report through the durable outbox. A refused report stops a training only when the store
confirms the attempt is over. ``docs/architecture.md`` ("The runner") has the details.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from opentelemetry import trace

from ..bus import subjects
from ..bus.command_client import CommandClient
from ..bus.connection import retry_transient, settle
from ..bus.messages import EventEnvelope, JobStateAnswer, ReplyError, decode_event_envelope
from ..bus.trace_headers import extract_context
from ..core import commands as c
from ..core import events as e
from ..core.errors import SwiftTrainerError
from ..core.ids import job_stream
from ..core.inventory import RunnerHeartbeat
from ..core.limits import MAX_REASON_CHARS
from ..core.spec import JobSpec
from ..core.tasks import cancel_and_wait, unsubscribe_quietly
from . import rank_starts
from .dataset_cache import DatasetCache, DatasetUnavailable
from .evaluation import evaluation_of
from .gpu_probe import GpuInventory, foreign_memory_mib
from .host_checks import (
    HandledEvents,
    assignment_problem,
    merged_artifact_complete,
    resolve_resume,
)
from .log_publisher import LogPublisher
from .outcome import JobOutcome
from .rendezvous import reaching_address
from .reporting import ReporterFactory, ReportOutbox
from .run_state import RunRecord, heartbeat_jobs, run_key, runner_version
from .sim_faults import job_fault_args
from .supervisor import AlreadyRunning, LaunchError, Supervisor
from .swift_command import (
    build_export_command,
    build_sft_command,
    expected_export_path,
)
from .tracker_runs import prepare_trackers

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

DEFAULT_MAX_FOREIGN_MEMORY_MIB: Final = 1024
#: How often a report refused while its attempt is still live is sent again.
MAX_REPORT_RESENDS: Final = 5
_LIVE: Final = frozenset({"scheduled", "running", "stopping"})
_GONE: Final = frozenset({"new", "deleted"})


def consumer_name(runner_id: str) -> str:
    return f"runner-{runner_id}"


def _is_dir(path: Path) -> bool:
    return path.is_dir()


class RunnerAgent:
    """One GPU host's agent; ``start()`` it on a connected client, ``stop()`` it to leave.

    ``state_dir`` holds the agent's own files (handled event ids, undelivered reports); the
    supervisor keeps its run states in its own folder (``create_runner_agent`` puts both
    under one). ``base_env`` is the environment of every swift process (default: this
    process's).
    """

    def __init__(
        self,
        nc: Client,
        *,
        runner_id: str,
        inventory: GpuInventory,
        supervisor: Supervisor,
        swift_executable: str | Sequence[str],
        output_root: str | Path,
        state_dir: str | Path,
        heartbeat_s: float = 2.0,
        lease_s: float = 10.0,
        grace_period_s: float | None = None,
        base_env: Mapping[str, str] | None = None,
        max_foreign_memory_mib: int = DEFAULT_MAX_FOREIGN_MEMORY_MIB,
        command_timeout_s: float = 10.0,
        stop_jobs_on_exit: bool = False,
        ack_wait_s: float = 300.0,
        max_deliver: int = 10,
        fetch_timeout_s: float = 1.0,
        simulate_faults: bool = False,
        labels: Mapping[str, str] | None = None,
        advertise_address: str | None = None,
    ) -> None:
        if not subjects.is_token(runner_id):
            raise SwiftTrainerError(
                f"runner id {runner_id!r} may only contain letters, digits, '_' and '-'",
                code="invalid_runner_id",
            )
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.runner_id = runner_id
        self.inventory = inventory
        self.supervisor = supervisor
        self.swift_executable = swift_executable
        self.output_root = Path(output_root).absolute()
        self.state_dir = Path(state_dir)
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s
        self.grace_period_s = grace_period_s
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.max_foreign_memory_mib = max_foreign_memory_mib
        self.stop_jobs_on_exit = stop_jobs_on_exit
        self.ack_wait_s = ack_wait_s
        self.max_deliver = max_deliver
        self.fetch_timeout_s = fetch_timeout_s
        #: Honour the ``sim.*`` fault labels (simulated runners only).
        self.simulate_faults = simulate_faults
        #: Host labels that jobs' ``host_labels`` match, sent with every heartbeat.
        self.labels = dict(labels or {})
        #: Where other hosts reach this one (rank 0's ``MASTER_ADDR``); found at start when
        #: not given.
        self.advertise_address = advertise_address
        self.draining = False
        self.malformed = 0
        self.client = CommandClient(nc, timeout=command_timeout_s, actor=runner_id)
        self.outbox = ReportOutbox(
            self.client, self.state_dir / "outbox", on_refused=self._on_refused
        )
        self.logs = LogPublisher(nc, runner_id)
        self.reporters = ReporterFactory(
            runner_id=runner_id,
            outbox=self.outbox,
            logs=self.logs,
            supervisor=supervisor,
            before_outcome=self._before_outcome,
        )
        self.handled = HandledEvents(self.state_dir / "handled.json")
        #: Uploaded datasets, fetched from the object store (the state dir is per runner).
        self.datasets = DatasetCache(self.js, self.state_dir / "datasets")
        self._kv: KeyValue | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.heartbeats = 0
        self.started = asyncio.Event()
        self._resent: dict[tuple[str, int, str], int] = {}
        self._resends: set[asyncio.Task[None]] = set()

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.advertise_address is None:
            url = self.nc.connected_url
            self.advertise_address = reaching_address(url.geturl() if url else None)
        self._kv = await retry_transient(
            lambda: self.js.key_value(subjects.RUNNERS_BUCKET), "runners bucket"
        )
        self.logs.start()
        resent = self.outbox.load()
        if resent:
            _log.info("re-sending %d reports left undelivered by the previous run", resent)
        records = await self.supervisor.reattach(
            job_reporter=self.reporters.reattached_job,
            export_reporter=self.reporters.reattached_export,
        )
        for record in records:
            _log.info(
                "re-attached to %s (pid %d, attempt %d)", record.key, record.pid, record.attempt
            )
        self._sub = await self.js.pull_subscribe(
            subjects.runner_events_filter(self.runner_id),
            durable=consumer_name(self.runner_id),
            stream=subjects.EVENTS_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.NEW,
                ack_wait=self.ack_wait_s,
                max_deliver=self.max_deliver,
                max_ack_pending=64,
            ),
        )
        await self._heartbeat_once()
        self._tasks = [
            asyncio.create_task(self._consume(), name=f"runner-{self.runner_id}-events"),
            asyncio.create_task(self._heartbeats(), name=f"runner-{self.runner_id}-heartbeat"),
        ]
        self.started.set()
        _log.info("runner %s up; job output under %s", self.runner_id, self.output_root)

    async def stop(self) -> None:
        """Leave: training keeps running for the next start unless ``stop_jobs_on_exit``."""
        for task in [*self._tasks, *self._resends]:
            await cancel_and_wait(task)
        self._tasks = []
        await unsubscribe_quietly(self._sub)
        self._sub = None
        await self.supervisor.close(kill=self.stop_jobs_on_exit)
        if not await self.outbox.drain(timeout=5.0):
            _log.warning(
                "%d reports still undelivered; they are sent when the runner starts again",
                self.outbox.pending(),
            )
        await self.outbox.close()
        await self.logs.stop()
        if self.stop_jobs_on_exit and self._kv is not None:
            # Nothing runs here any more: tell the scheduler now instead of after the lease.
            with contextlib.suppress(Exception):
                await self._kv.delete(self.runner_id)
        await asyncio.to_thread(self.inventory.close)

    # --- heartbeat ----------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self._heartbeat_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away: the next beat tries again
                _log.warning("heartbeat failed: %s", exc)

    async def heartbeat(self) -> RunnerHeartbeat:
        """The heartbeat as it would be put now (the inventory is read in a thread)."""
        before = await self.supervisor.own_pids_async()
        snapshot = await asyncio.to_thread(self.inventory.snapshot)
        own = before | await self.supervisor.own_pids_async()
        return RunnerHeartbeat(
            runner_id=self.runner_id,
            at=datetime.now(UTC),
            lease_s=self.lease_s,
            inventory=snapshot,
            foreign_memory_mib={gpu.index: foreign_memory_mib(gpu, own) for gpu in snapshot.gpus},
            jobs=heartbeat_jobs(self.supervisor.running(), self.outbox.undelivered_attempts()),
            draining=self.draining,
            version=runner_version(),
            labels=self.labels,
            advertise_address=self.advertise_address,
        )

    async def _heartbeat_once(self) -> None:
        assert self._kv is not None
        beat = await self.heartbeat()
        await self._kv.put(self.runner_id, msgspec.json.encode(beat))
        self.heartbeats += 1

    async def _before_outcome(self, outcome: JobOutcome) -> None:
        """A run that ended on faulted GPUs is heartbeaten at once, before its failure is
        reported: the scheduler (and ``GET /gpus``) then sees the cards' faults before it
        retries the job elsewhere, not up to ``heartbeat_s`` later."""
        if outcome.failure is None or not outcome.failure.gpus or self._kv is None:
            return
        try:
            await self._heartbeat_once()
        except Exception as exc:  # NATS away: the next regular beat carries the faults
            _log.warning("the heartbeat after a GPU fault failed: %s", exc)

    # --- events -------------------------------------------------------------------------

    async def _consume(self) -> None:
        assert self._sub is not None
        while True:
            try:
                messages = await self._sub.fetch(batch=16, timeout=self.fetch_timeout_s)
            except (TimeoutError, NatsTimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnecting, consumer gone for a moment
                _log.warning("fetching runner events failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            for msg in messages:
                await self.handle_message(msg)

    async def handle_message(self, msg: Msg) -> None:
        """Act on one event message, then ack it; a broken message is terminated."""
        try:
            envelope = decode_event_envelope(msg.data)
            event = e.decode_event(envelope.type, bytes(envelope.event), envelope.schema_version)
        except SwiftTrainerError as exc:
            self.malformed += 1
            _log.warning("terminating undecodable message on %s: %s", msg.subject, exc)
            await settle(msg.term(), "term", msg)
            return
        with _tracer.start_as_current_span(
            f"runner {envelope.type}",
            context=extract_context(dict(msg.headers or {})),
            kind=trace.SpanKind.CONSUMER,
            attributes={"runner.id": self.runner_id, "event.id": envelope.event_id},
        ):
            try:
                await self.dispatch(envelope, event)
            except Exception:
                _log.exception(
                    "handling %s %s failed; redelivering", envelope.type, envelope.event_id
                )
                await settle(msg.nak(delay=2.0), "nak", msg)
                return
        await settle(msg.ack(), "ack", msg)

    async def dispatch(self, envelope: EventEnvelope, event: e.AnyEvent) -> None:
        match event:
            case e.JobScheduled() if event.runner_id == self.runner_id:
                await self._on_scheduled(envelope, event)
            case e.StopRequested() if event.runner_id == self.runner_id:
                self._on_stop(event)
            case e.RankStartRequested() if event.runner_id == self.runner_id:
                await rank_starts.on_rank_start(self, envelope, event)
            case e.ExportRequested() if event.runner_id == self.runner_id:
                await self._on_export(envelope, event)
            case _:
                _log.debug("ignoring %s for %s", envelope.type, envelope.stream_id)

    async def job_spec(self, job_id: str) -> JobSpec | None:
        """The spec from the job's ``JobSubmitted`` on the EVENTS stream (the latest one:
        a deleted id may have been submitted again)."""
        subject = subjects.event_subject(job_stream(job_id), "JobSubmitted")
        try:
            raw = await self.js.get_last_msg(subjects.EVENTS_STREAM, subject)
        except NotFoundError:
            return None
        envelope = decode_event_envelope(raw.data or b"")
        event = e.decode_event(envelope.type, bytes(envelope.event), envelope.schema_version)
        return event.spec if isinstance(event, e.JobSubmitted) else None

    def _running_job(self, job_id: str) -> RunRecord | None:
        key = run_key("job", job_id)
        return next((r for r in self.supervisor.running() if r.key == key), None)

    def _reject(self, event: e.JobScheduled, reason: str) -> None:
        _log.warning("rejecting attempt %d of %s: %s", event.attempt, event.job_id, reason)
        self.outbox.submit(
            c.RejectAssignment(
                job_id=event.job_id,
                attempt=event.attempt,
                runner_id=self.runner_id,
                reason=reason[:MAX_REASON_CHARS],
            ),
        )

    async def _on_scheduled(self, envelope: EventEnvelope, event: e.JobScheduled) -> None:
        job_id, attempt = event.job_id, event.attempt
        running = self._running_job(job_id)
        if running is not None and running.attempt == attempt:
            return  # a redelivery: the supervisor runs it already
        if envelope.event_id in self.handled:
            return  # acted on before (the process may have ended since)
        if running is not None and running.attempt > attempt:
            _log.info(
                "ignoring attempt %d of %s: attempt %d runs", attempt, job_id, running.attempt
            )
        elif not await self._still_scheduled(event):
            pass  # the store has moved on (a late redelivery): nothing to start or reject
        elif running is not None:
            # An older attempt still runs here: it is stale (the job was requeued after this
            # runner's lease expired). Stop it; the new attempt goes back to the queue.
            self.supervisor.request_stop(running.key, grace_period_s=self.grace_period_s)
            self._reject(event, f"attempt {running.attempt} of this job is still stopping here")
        else:
            resume = resolve_resume(event.resume_from)
            problem = await self._check_assignment(event) or resume.problem
            if problem is None:
                await self._start(event, resume.path)
            else:
                self._reject(event, problem)
        self.handled.add(envelope.event_id)

    async def _still_scheduled(self, event: e.JobScheduled) -> bool:
        """Whether the store still shows this attempt waiting to start here. A placement
        redelivered after the job was requeued (this runner restarted while it was in
        flight) must not start a training nobody waits for. When no handler answers, the
        start goes ahead: a stale one is refused at its first report and stopped then."""
        stored = await self._stored_state(event.job_id)
        if stored is None:
            return True
        if stored.attempt == event.attempt and stored.status == "scheduled":
            return True
        _log.info(
            "not starting attempt %d of %s: the store shows it %s at attempt %d",
            event.attempt,
            event.job_id,
            stored.status,
            stored.attempt,
        )
        return False

    async def _check_assignment(self, event: e.JobScheduled) -> str | None:
        """Why this host cannot run the assignment now, or None."""
        before = await self.supervisor.own_pids_async()
        snapshot = await asyncio.to_thread(self.inventory.snapshot)
        own = before | await self.supervisor.own_pids_async()
        problem = assignment_problem(
            event, snapshot, own, self.supervisor.running(), self.max_foreign_memory_mib
        )
        return problem

    async def _start(self, event: e.JobScheduled, resume_from: str | None) -> None:
        spec = await self.job_spec(event.job_id)
        if spec is None:
            self._reject(event, f"no JobSubmitted for job {event.job_id} on the EVENTS stream")
            return
        try:
            dataset_files = await self.datasets.resolve(spec)
        except DatasetUnavailable as exc:
            self._reject(event, exc.message)
            return
        extra_args = (
            job_fault_args(spec, event.train_args, event.attempt, self.output_root)
            if self.simulate_faults
            else []
        )
        if event.train_args is not None:  # a retry changed them (a halved batch)
            spec = msgspec.structs.replace(spec, train_args=event.train_args)
        marker = None
        if event.peers:
            marker = await rank_starts.publish_marker(self, event, spec)
            if marker is None:
                return
        try:
            invocation = build_sft_command(
                spec,
                extra_args=extra_args,
                output_root=self.output_root,
                gpu_ids=event.gpu_ids,
                resume_from=resume_from,
                swift_executable=self.swift_executable,
                base_env=self.base_env,
                gpu_uuids=event.gpu_uuids,
                dataset_files=dataset_files,
                run_name=event.job_id,
                run_tags={"job_id": event.job_id, **spec.labels},
                rendezvous=None if marker is None else rank_starts.head_env(event, marker),
            )
            tracked = await prepare_trackers(invocation, event.job_id)
            invocation = tracked.invocation
            with _tracer.start_as_current_span(
                "swift sft start",
                attributes={"job.id": event.job_id, "job.attempt": event.attempt},
            ):
                pid = await self.supervisor.start_job(
                    event.job_id,
                    event.attempt,
                    invocation,
                    self.reporters.job(
                        event.job_id,
                        event.attempt,
                        evaluation_of(
                            spec,
                            event.gpu_ids,
                            output_root=self.output_root,
                            swift_executable=self.swift_executable,
                            base_env=self.base_env,
                        ),
                        warnings=tracked.warnings,
                        tracker_urls=tracked.urls,
                        rank=0 if event.peers else None,
                    ),
                    gpu_ids=event.gpu_ids,
                )
        except (LaunchError, AlreadyRunning, ValueError) as exc:
            self._reject(event, str(exc))
            return
        _log.info("started attempt %d of %s: pid %d", event.attempt, event.job_id, pid)
        if marker is not None:
            self.outbox.submit(rank_starts.rendezvous_report(event, self.runner_id, marker))

    def _on_stop(self, event: e.StopRequested) -> None:
        running = self._running_job(event.job_id)
        if running is not None and event.attempt in (0, running.attempt):
            # A preemption names its own grace: the process is killed when it runs out.
            grace = self.grace_period_s if event.grace_s is None else event.grace_s
            self.supervisor.request_stop(running.key, grace_period_s=grace)
        elif running is None and event.attempt:
            # Nothing of the job runs here (it ended, or never could start): say so, or the
            # job would wait in "stopping" for a report that never comes.
            self.outbox.submit(
                c.ReportStopped(
                    job_id=event.job_id, attempt=event.attempt, runner_id=self.runner_id
                ),
            )

    async def _on_export(self, envelope: EventEnvelope, event: e.ExportRequested) -> None:
        key = run_key("export", event.export_id)
        if self.supervisor.is_running(key) or envelope.event_id in self.handled:
            return
        checkpoint = Path(event.checkpoint)
        target = expected_export_path(checkpoint)
        ids = {"job_id": event.job_id, "export_id": event.export_id, "runner_id": self.runner_id}
        if not _is_dir(checkpoint):
            self.outbox.submit(
                c.ReportExportFailed(
                    **ids, exit_code=None, reason=f"checkpoint {checkpoint} is not on this runner"
                ),
            )
        elif merged_artifact_complete(target) and not event.overwrite:
            self.outbox.submit(c.ReportExportSucceeded(**ids, artifact_path=str(target)))
        else:
            invocation = build_export_command(
                checkpoint,
                overwrite=event.overwrite,
                swift_executable=self.swift_executable,
                base_env=self.base_env,
            )
            try:
                await self.supervisor.start_export(
                    event.job_id, event.export_id, invocation, self.reporters.export(event)
                )
            except LaunchError as exc:
                self.outbox.submit(c.ReportExportFailed(**ids, exit_code=None, reason=str(exc)))
        self.handled.add(envelope.event_id)

    async def _on_refused(self, command: c.AnyJobCommand, error: ReplyError) -> None:
        """Confirm a refusal against the job's stored state before acting on it.

        The process is stopped only when the store says its attempt is over (the job moved
        to another attempt, ended, or is gone). A report refused while the store still
        shows this attempt live was refused by a state that has moved on since: it is sent
        again, with a new command id (the old one keeps its refusal), a bounded number of
        times. Progress is not re-sent: the next report supersedes it.
        """
        stored = await self._stored_state(command.job_id)
        if isinstance(command, c.ExportReport):
            if stored is not None and stored.status in _GONE:
                self.supervisor.request_stop(run_key("export", command.export_id))
            return
        if not isinstance(command, c.RunnerReport):
            return
        if stored is None or (stored.attempt == command.attempt and stored.status in _LIVE):
            self._send_again(command, error)
            return
        running = self._running_job(command.job_id)
        if running is not None and running.attempt == command.attempt:
            _log.warning(
                "stopping attempt %d of %s: the store shows the job %s at attempt %d (%s)",
                command.attempt,
                command.job_id,
                stored.status,
                stored.attempt,
                error.message,
            )
            self.supervisor.request_stop(running.key, grace_period_s=self.grace_period_s)

    async def _stored_state(self, job_id: str) -> JobStateAnswer | None:
        try:
            return await self.client.job_state(job_id)
        except SwiftTrainerError as exc:
            _log.warning("cannot confirm the state of %s: %s", job_id, exc)
            return None

    def _send_again(self, command: c.AnyJobCommand, error: ReplyError) -> None:
        if isinstance(command, c.ReportProgress) or not isinstance(command, c.RunnerReport):
            return
        key = (command.job_id, command.attempt, type(command).__name__)
        tries = self._resent.get(key, 0) + 1
        if tries > MAX_REPORT_RESENDS:
            _log.error(
                "giving up on %s for attempt %d of %s after %d refusals: %s",
                key[2],
                command.attempt,
                command.job_id,
                tries - 1,
                error.message,
            )
            return
        self._resent[key] = tries

        async def later() -> None:
            await asyncio.sleep(min(0.5 * 2**tries, 10.0))
            self.outbox.submit(command)

        task = asyncio.create_task(later(), name=f"resend {key}")
        self._resends.add(task)
        task.add_done_callback(self._resends.discard)
