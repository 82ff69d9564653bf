"""The reporter of each run the supervisor watches: outcomes go to the durable outbox,
output lines to the LOGS stream, under this runner's id."""

from __future__ import annotations

from ..core import commands as c
from ..core import events as e
from .log_publisher import LogPublisher
from .reporting import (
    ExportReports,
    JobReports,
    ReportOutbox,
    export_started_command_id,
    started_command_id,
)
from .run_state import RunRecord, run_key
from .supervisor import Supervisor


class RunReporters:
    """Builds ``JobReports`` / ``ExportReports``; a start's command id carries the
    process's create time (from the supervisor), so a re-sent start is deduplicated."""

    def __init__(
        self,
        *,
        runner_id: str,
        outbox: ReportOutbox,
        logs: LogPublisher,
        supervisor: Supervisor,
    ) -> None:
        self.runner_id = runner_id
        self.outbox = outbox
        self.logs = logs
        self.supervisor = supervisor

    def job(self, job_id: str, attempt: int, rank: int | None = None) -> JobReports:
        key = run_key("job", job_id)

        def started_id(pid: int) -> str:
            record = next((r for r in self.supervisor.running() if r.key == key), None)
            created = record.create_time if record is not None and record.pid == pid else 0.0
            return started_command_id(job_id, attempt, pid, created)

        return JobReports(
            job_id=job_id,
            attempt=attempt,
            runner_id=self.runner_id,
            outbox=self.outbox,
            logs=self.logs,
            started_id=started_id,
            rank=rank,
        )

    def export(self, event: e.ExportRequested) -> ExportReports:
        key = run_key("export", event.export_id)

        def started_id(pid: int) -> str:
            record = next((r for r in self.supervisor.running() if r.key == key), None)
            created = record.create_time if record is not None and record.pid == pid else 0.0
            return export_started_command_id(event.export_id, pid, created)

        return ExportReports(
            job_id=event.job_id,
            export_id=event.export_id,
            runner_id=self.runner_id,
            outbox=self.outbox,
            logs=self.logs,
            started_id=started_id,
        )

    def reattached_job(self, record: RunRecord) -> JobReports:
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

    def reattached_export(self, record: RunRecord) -> ExportReports:
        export_id = record.export_id or ""
        reports = ExportReports(
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
