"""Whether this host can run an assignment now: the runner's own check of a placement.

The scheduler places from heartbeats that may be seconds old; this check uses the GPUs as
they are when the start arrives. Pure, over a fresh inventory snapshot.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from ..core import events as e
from ..core.inventory import InventorySnapshot
from .gpu_probe import foreign_memory_mib
from .run_state import RunRecord


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
