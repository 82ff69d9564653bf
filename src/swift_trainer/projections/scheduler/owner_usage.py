"""GPUs in use per owner, and owners' ``max_gpus`` quotas: the inputs of fair share.

An owner's GPUs in use are those held by its jobs exactly as ``Occupancy`` counts them
(scheduled, running and stopping jobs, claims in flight, claims that outlived their
attempt), so a quota and the free-GPU index can never disagree about what is held. A pass
adds the GPUs it places as it goes, so a second job of the same owner in the same pass sees
the first one's GPUs (see ``placement``). Jobs without an owner (no API keys, or submitted
by an operator) share the owner ``None``, which has no quota.
"""

from __future__ import annotations

from typing import Final

#: The code a queue entry carries when its owner's ``max_gpus`` keeps it waiting.
OWNER_GPU_QUOTA: Final = "owner_gpu_quota"

Owner = str | None


class OwnerUsage:
    """Who holds how many GPUs, and who may hold how many."""

    __slots__ = ("_held", "_in_use", "_max_gpus")

    def __init__(self) -> None:
        self._held: dict[str, tuple[Owner, int]] = {}
        self._in_use: dict[Owner, int] = {}
        self._max_gpus: dict[str, int] = {}

    # --- usage --------------------------------------------------------------------------

    def hold(self, job_id: str, owner: Owner, gpus: int) -> None:
        """``job_id`` holds ``gpus`` GPUs for ``owner`` (replacing what it held before)."""
        self.release(job_id)
        self._held[job_id] = (owner, gpus)
        self._in_use[owner] = self._in_use.get(owner, 0) + gpus

    def release(self, job_id: str) -> None:
        entry = self._held.pop(job_id, None)
        if entry is None:
            return
        owner, gpus = entry
        left = self._in_use[owner] - gpus
        if left:
            self._in_use[owner] = left
        else:
            del self._in_use[owner]

    def holding(self, job_id: str) -> tuple[Owner, int] | None:
        """``(owner, gpus)`` that ``job_id`` holds, or None."""
        return self._held.get(job_id)

    def in_use(self, owner: Owner) -> int:
        return self._in_use.get(owner, 0)

    # --- quotas -------------------------------------------------------------------------

    def set_quota(self, owner: str, max_gpus: int | None) -> None:
        """``None`` lifts the limit."""
        if max_gpus is None:
            self._max_gpus.pop(owner, None)
        else:
            self._max_gpus[owner] = max_gpus

    def max_gpus(self, owner: Owner) -> int | None:
        return None if owner is None else self._max_gpus.get(owner)

    def over_quota(self, owner: Owner, gpus: int) -> bool:
        """Whether starting a job of ``gpus`` GPUs now would take ``owner`` past its limit."""
        limit = None if owner is None else self._max_gpus.get(owner)
        return limit is not None and self._in_use.get(owner, 0) + gpus > limit

    def never_within_quota(self, owner: Owner, gpus: int) -> bool:
        """A job bigger than its owner's whole quota waits until the quota is raised."""
        limit = None if owner is None else self._max_gpus.get(owner)
        return limit is not None and gpus > limit

    def quota_reason(self, owner: Owner, gpus: int) -> str | None:
        """Why a job of ``owner`` needing ``gpus`` GPUs cannot start now, or None."""
        limit = self.max_gpus(owner)
        if limit is None or owner is None:
            return None
        if gpus > limit:
            return (
                f"needs {gpus} GPUs, more than owner {owner!r}'s max_gpus of {limit}; "
                "it waits until an admin raises the quota"
            )
        in_use = self.in_use(owner)
        if in_use + gpus <= limit:
            return None
        return (
            f"owner {owner!r} has {in_use} of its max_gpus {limit} GPUs in use; it starts "
            "when enough of them are freed"
        )

    def clone(self) -> OwnerUsage:
        copy = OwnerUsage()
        copy._held = dict(self._held)
        copy._in_use = dict(self._in_use)
        copy._max_gpus = dict(self._max_gpus)
        return copy
