"""The durable record of each run, so a restarted runner can find and judge its runs.

Each run's pid, session, create time, argv, output folder, log offsets and attempt are
kept in one small JSON file in the runner's state folder; ``Supervisor.reattach`` reads
them back after a restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import re
from collections.abc import Iterable, Set
from pathlib import Path
from typing import Literal

import msgspec

from ..core.atomic_file import write_atomic
from ..core.inventory import RunnerJob

_log = logging.getLogger(__name__)


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


def state_file_name(key: str) -> str:
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
        return self.state_dir / state_file_name(key)

    def save(self, record: RunRecord) -> None:
        write_atomic(self.path(record.key), msgspec.json.encode(record))

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


def heartbeat_jobs(
    running: Iterable[RunRecord], undelivered: Set[tuple[str, int]]
) -> tuple[RunnerJob, ...]:
    """The runs a heartbeat lists: every live process, then each attempt that ended but
    whose outcome is not delivered yet. Those are listed without a pid, so the scheduler
    does not take them for vanished processes."""
    live = [
        RunnerJob(
            job_id=record.job_id,
            attempt=record.attempt,
            kind=record.kind,
            export_id=record.export_id,
            pid=record.pid,
        )
        for record in running
    ]
    listed = {(job.job_id, job.attempt) for job in live if job.kind == "job"}
    ending = [
        RunnerJob(job_id=job_id, attempt=attempt)
        for job_id, attempt in sorted(set(undelivered) - listed)
    ]
    return (*live, *ending)


def runner_version() -> str:
    """The installed swift-trainer version a heartbeat reports ("" when not installed)."""
    try:
        return importlib.metadata.version("swift-trainer")
    except importlib.metadata.PackageNotFoundError:
        return ""
