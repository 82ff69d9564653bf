"""What a runner checks on its own host around a run: the checkpoint a start resumes
from, the GPUs it was assigned, the events already acted on, and a merged model's files.

Pure functions of the host's files and GPU snapshot (no NATS), shared by the agent and the
start of a multi-node job's other ranks.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Final

import msgspec

from ..core import events as e
from ..core.atomic_file import write_atomic
from ..core.inventory import InventorySnapshot
from .gpu_probe import foreign_memory_mib
from .run_state import RunRecord

_log = logging.getLogger(__name__)


def merged_artifact_complete(path: str | Path) -> bool:
    """A merged model folder with its config and at least one weight file."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        return False
    patterns = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")
    return any(any(folder.glob(pattern)) for pattern in patterns)


class ResumePoint(msgspec.Struct, frozen=True):
    """The checkpoint an attempt resumes from on this host, or why there is none."""

    path: str | None
    problem: str | None = None


_CHECKPOINT_DIR: Final = re.compile(r"checkpoint-(\d+)")


def resolve_resume(resume_from: str | None) -> ResumePoint:
    """The checkpoint to resume from here, or why there is none.

    A relative path is resolved inside the job's output folder by the command builder. An
    absolute one must be on this host. When it is gone but the folder holds newer complete
    checkpoints (an attempt marked lost trained on, and ``save_total_limit`` rotated the
    recorded one away), the newest is used: it holds at least as much progress. A
    checkpoint folder without its ``trainer_state.json`` is incomplete and never used.
    """
    if not resume_from or not Path(resume_from).is_absolute():
        return ResumePoint(resume_from)
    if (Path(resume_from) / "trainer_state.json").is_file():
        return ResumePoint(resume_from)  # complete: HF's Trainer writes this file last
    named = Path(resume_from)
    candidates = []
    with contextlib.suppress(OSError):
        for entry in named.parent.iterdir():
            match = _CHECKPOINT_DIR.fullmatch(entry.name)
            if match and (entry / "trainer_state.json").is_file():
                candidates.append((int(match.group(1)), entry))
    if candidates:
        newest = max(candidates)[1]
        _log.warning("checkpoint %s is gone or incomplete; resuming from %s", named, newest)
        return ResumePoint(str(newest))
    return ResumePoint(None, f"checkpoint {resume_from} to resume from is not on this runner")


def assignment_problem(
    event: e.JobScheduled,
    snapshot: InventorySnapshot,
    own_pids: Collection[int],
    running: Iterable[RunRecord],
    max_foreign_memory_mib: int,
) -> str | None:
    """Why the assigned GPUs cannot be used now, or None: not visible here, another UUID
    (a stale placement), in use by another job of ours, or holding more than
    ``max_foreign_memory_mib`` of processes this runner did not start."""
    gpus = {gpu.index: gpu for gpu in snapshot.gpus}
    missing = [i for i in event.gpu_ids if i not in gpus]
    if missing:
        return f"GPUs {missing} are not visible on this runner ({snapshot.error or 'not listed'})"
    for index, uuid in zip(event.gpu_ids, event.gpu_uuids, strict=False):
        if gpus[index].uuid != uuid:
            return f"GPU {index} is {gpus[index].uuid} here, not {uuid}: the placement is stale"
    for record in running:
        shared = sorted(set(record.gpu_ids) & set(event.gpu_ids))
        if shared and record.kind == "job" and record.job_id != event.job_id:
            return f"GPUs {shared} are in use by job {record.job_id} on this runner"
    for index in event.gpu_ids:
        foreign = foreign_memory_mib(gpus[index], own_pids)
        if foreign > max_foreign_memory_mib:
            return (
                f"GPU {index} has {foreign} MiB in use by processes this runner did not "
                f"start (limit {max_foreign_memory_mib} MiB)"
            )
    return None


class HandledEvents:
    """Ids of the start and export events acted on, kept on disk across restarts.

    A start redelivered after the process it started has already ended (the ack was lost
    with a crash) must not train the attempt a second time. Bounded: the oldest ids go.
    """

    def __init__(self, path: str | Path, *, limit: int = 4096) -> None:
        self.path = Path(path)
        self.limit = limit
        self._ids: dict[str, None] = {}
        try:
            loaded = msgspec.json.decode(self.path.read_bytes(), type=list[str])
        except FileNotFoundError:
            loaded = []
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            _log.warning("ignoring unreadable %s: %s", self.path, exc)
            loaded = []
        self._ids = dict.fromkeys(loaded[-limit:])

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        while len(self._ids) > self.limit:
            self._ids.pop(next(iter(self._ids)))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_atomic(self.path, msgspec.json.encode(list(self._ids)))
        except OSError as exc:
            _log.error("cannot persist %s: %s", self.path, exc)
