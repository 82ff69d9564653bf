"""Which GPUs are free, who holds the others and until when, indexed for fast placement.

``Occupancy`` is the mutable heart of the placement core. It is rebuilt from snapshots and
running jobs (so it is a projection like any other), and updated in place as jobs start and
end, so that one decision does not rescan the cluster:

- hosts are bucketed by their number of free usable GPUs, so the tightest host that fits a
  job without constraints is the first runner of the first non-empty bucket at or above the
  job's GPU count;
- each host keeps the sorted times at which its GPUs become free, rebuilt only when that
  host changes, so a reservation looks at one number per host.

The rules themselves (which GPU is usable, which GPUs of a host a job gets) live in
``gpu_choice``; this module only indexes them. A GPU is *free* when it is usable, held by no
job and not reserved.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence
from typing import Final

from .gpu_choice import (
    ANY_GPU,
    GpuPreference,
    Requirement,
    gpu_matches,
    gpu_preference,
    host_matches,
    is_usable,
    select_gpus,
    shared_labels,
)
from .gpu_snapshots import GpuSnapshot, HostSnapshot

INFINITY: Final = math.inf
#: Sorts free GPUs before every real time; read as "now" wherever a time is reported.
_FREE_NOW: Final = -math.inf

_GpuTime = tuple[float, GpuPreference, int]
#: How a host ranks for a reservation: its first N free times, latest first, then its id.
_ReservationKey = tuple[tuple[float, ...], str]
#: Where each rank of a gang runs: ``(runner_id, gpu_ids)``, rank 0 first.
GangHosts = tuple[tuple[str, tuple[int, ...]], ...]


def rank_key(job_id: str, rank: int) -> str:
    """The key a multi-node job's rank holds its GPUs under (rank 0: the job id itself)."""
    return job_id if rank == 0 else f"{job_id}#{rank}"


def job_of_key(key: str) -> str:
    """The job a holding key belongs to (job ids never contain ``#``)."""
    return key.split("#", 1)[0]


class _HostInfo:
    """What one snapshot says about a host, computed once per snapshot."""

    __slots__ = ("_matching", "gpus", "healthy", "labels", "preference", "runner_id", "usable")

    def __init__(self, host: HostSnapshot, foreign_memory_threshold_mib: int) -> None:
        self.runner_id = host.runner_id
        self.labels = dict(host.labels)
        self.gpus = {gpu.index: gpu for gpu in host.gpus}
        self.healthy = frozenset(i for i, gpu in self.gpus.items() if gpu.healthy)
        self.usable = frozenset(
            i for i in self.healthy if is_usable(self.gpus[i], foreign_memory_threshold_mib)
        )
        self.preference = {i: gpu_preference(gpu) for i, gpu in self.gpus.items()}
        self._matching: dict[Requirement, frozenset[int]] = {ANY_GPU: self.healthy}

    def matching(self, requirement: Requirement) -> frozenset[int]:
        """Healthy GPUs meeting ``requirement``, busy or not: the host's capacity for it."""
        found = self._matching.get(requirement)
        if found is None:
            if host_matches(self.labels, requirement):
                found = frozenset(i for i in self.healthy if gpu_matches(self.gpus[i], requirement))
            else:
                found = frozenset()
            self._matching[requirement] = found
        return found


class Occupancy:
    """Free GPUs, holders and expected end times; every method is pure computation.

    Times are seconds on one axis chosen by the caller: a live scheduler puts "now" at 0 and a
    job's end at its ``remaining_s``; the wait simulation moves "now" forward along the same
    axis. An unknown end is ``INFINITY``.
    """

    __slots__ = (
        "_by_free",
        "_candidates",
        "_capacity",
        "_ends",
        "_free",
        "_holders",
        "_hosts",
        "_jobs",
        "_layouts",
        "_ranks",
        "_reservation_heaps",
        "_reserved",
        "_stale_for",
        "_stamp",
        "_stamps",
        "_threshold",
        "_times",
        "_total_free",
    )

    def __init__(self, foreign_memory_threshold_mib: int = 1024) -> None:
        self._threshold = foreign_memory_threshold_mib
        self._hosts: dict[str, _HostInfo] = {}  # live hosts only
        self._free: dict[str, set[int]] = {}  # live hosts only
        self._holders: dict[str, dict[int, set[str]]] = {}  # any runner, live or not
        self._jobs: dict[str, tuple[str, tuple[int, ...]]] = {}
        #: A multi-node job's keys for its ranks past rank 0 (see ``rank_key``).
        self._ranks: dict[str, list[str]] = {}
        self._ends: dict[str, float] = {}
        self._reserved: dict[str, frozenset[int]] = {}
        self._by_free: list[list[str]] = [[]]  # k -> sorted runner ids with k free GPUs
        self._total_free = 0
        self._times: dict[str, list[_GpuTime]] = {}
        self._capacity: dict[Requirement, int] = {}
        self._candidates: dict[Requirement, list[tuple[str, frozenset[int]]]] = {}
        # Per gang size, a heap of hosts by reservation key for jobs without constraints.
        # Entries go stale when their host changes (its stamp moves on); stale ones are
        # skipped when they surface, and changed hosts are pushed again on the next query.
        self._reservation_heaps: dict[int, list[tuple[_ReservationKey, int]]] = {}
        self._stale_for: dict[int, set[str]] = {}
        self._stamps: dict[str, int] = {}
        self._stamp = 0
        #: Per host, the stamp of its last change of GPUs or holders (not of end times).
        self._layouts: dict[str, int] = {}

    # --- inventory ----------------------------------------------------------------------

    def set_host(self, host: HostSnapshot) -> None:
        """Take a runner's latest report; a runner reported dead leaves the index."""
        if not host.alive:
            self.drop_host(host.runner_id)
            return
        self._hosts[host.runner_id] = _HostInfo(host, self._threshold)
        self._capacity.clear()
        self._candidates.clear()
        self._refresh(host.runner_id)

    def drop_host(self, runner_id: str) -> None:
        """Forget a runner's GPUs; jobs it holds keep their claim until they are released."""
        if self._hosts.pop(runner_id, None) is None:
            return
        self._unindex(runner_id, len(self._free.pop(runner_id)))
        self._changed(runner_id)
        self._capacity.clear()
        self._candidates.clear()

    def is_live(self, runner_id: str) -> bool:
        return runner_id in self._hosts

    @property
    def runner_ids(self) -> list[str]:
        return sorted(self._hosts)

    def gpu(self, runner_id: str, index: int) -> GpuSnapshot:
        return self._hosts[runner_id].gpus[index]

    # --- jobs ---------------------------------------------------------------------------

    def hold(self, job_id: str, runner_id: str, gpu_ids: Sequence[int], ends_at: float) -> None:
        """Record a job on its GPUs; holding again moves it (a replayed or corrected report)."""
        if job_id in self._jobs:
            self.release(job_id)
        gpus = tuple(gpu_ids)
        self._jobs[job_id] = (runner_id, gpus)
        self._ends[job_id] = ends_at
        held = self._holders.setdefault(runner_id, {})
        for index in gpus:
            held.setdefault(index, set()).add(job_id)
        self._refresh(runner_id)

    def hold_gang(self, job_id: str, hosts: GangHosts, ends_at: float) -> None:
        """Record a multi-node job on every rank's GPUs at once (rank 0 first)."""
        self.release(job_id)
        for rank, (runner_id, gpu_ids) in enumerate(hosts):
            self.hold(rank_key(job_id, rank), runner_id, gpu_ids, ends_at)
        self._ranks[job_id] = [rank_key(job_id, rank) for rank in range(1, len(hosts))]

    def release(self, job_id: str) -> bool:
        for key in self._ranks.pop(job_id, ()):
            self._release_key(key)
        return self._release_key(job_id)

    def _release_key(self, job_id: str) -> bool:
        placed = self._jobs.pop(job_id, None)
        if placed is None:
            return False
        del self._ends[job_id]
        runner_id, gpus = placed
        held = self._holders[runner_id]
        for index in gpus:
            holders = held[index]
            holders.discard(job_id)
            if not holders:
                del held[index]
        if not held:
            del self._holders[runner_id]
        self._refresh(runner_id)
        return True

    def set_end(self, job_id: str, ends_at: float) -> None:
        for key in (job_id, *self._ranks.get(job_id, ())):
            if key in self._jobs:
                self._ends[key] = ends_at
                self._changed(self._jobs[key][0])

    def holding(self, job_id: str) -> tuple[str, tuple[int, ...]] | None:
        return self._jobs.get(job_id)

    def ends_at(self, job_id: str) -> float | None:
        return self._ends.get(job_id)

    @property
    def job_ids(self) -> list[str]:
        return [key for key in self._jobs if "#" not in key]

    def jobs_on(self, runner_id: str) -> list[str]:
        """The jobs holding GPUs of a runner, whichever rank they hold there."""
        held = self._holders.get(runner_id, {})
        return sorted({job_of_key(key) for holders in held.values() for key in holders})

    # --- reservations (pass-local) ------------------------------------------------------

    def reserve(self, runner_id: str, gpu_ids: Iterable[int]) -> None:
        self._reserved[runner_id] = frozenset(gpu_ids)
        self._refresh(runner_id)

    def unreserve(self, runner_id: str) -> None:
        if self._reserved.pop(runner_id, None) is not None:
            self._refresh(runner_id)

    # --- queries ------------------------------------------------------------------------

    @property
    def total_free(self) -> int:
        return self._total_free

    def free_gpus(self, runner_id: str) -> frozenset[int]:
        return frozenset(self._free.get(runner_id, ()))

    def usable_gpus(self, runner_id: str, requirement: Requirement) -> frozenset[int]:
        """GPUs of a live host a job with ``requirement`` may use, busy or not."""
        info = self._hosts.get(runner_id)
        if info is None:
            return frozenset()
        return info.usable if requirement == ANY_GPU else info.usable & info.matching(requirement)

    def layout_stamp(self, runner_id: str) -> int:
        """Changes whenever the host's GPUs, free set or holders change (not end times):
        what a cache of the host's layout is valid for."""
        return self._layouts.get(runner_id, 0)

    def holders_at(self, runner_id: str, index: int) -> frozenset[str]:
        """Who holds one GPU (empty when it is free)."""
        return frozenset(self._holders.get(runner_id, {}).get(index, ()))

    def holders_on(self, runner_id: str) -> dict[int, frozenset[str]]:
        """Who holds each busy GPU of a host (a job id, or a claim or hold key)."""
        held = self._holders.get(runner_id, {})
        return {index: frozenset(jobs) for index, jobs in held.items()}

    def max_free(self) -> int:
        """The most free GPUs on any one host: no gang larger than this fits anywhere."""
        for count in range(len(self._by_free) - 1, 0, -1):
            if self._by_free[count]:
                return count
        return 0

    def capacity(self, requirement: Requirement) -> int:
        """The most GPUs meeting ``requirement`` on one live host, busy or not.

        A job needing more can never be placed on the hosts known now, however long it waits.
        """
        found = self._capacity.get(requirement)
        if found is None:
            sizes = sorted(
                (len(h.matching(requirement)) for h in self._hosts.values()), reverse=True
            )
            nodes = requirement.nodes
            # A gang of N hosts is as big as the N-th biggest host it could use.
            found = sizes[nodes - 1] if len(sizes) >= nodes else 0
            self._capacity[requirement] = found
        return found

    def fit_host(self, count: int, requirement: Requirement) -> str | None:
        """The host where ``count`` free matching GPUs fit most tightly, ties to the lowest id.

        Tightest means fewest free matching GPUs that still suffice, so that whole hosts stay
        free for the gangs that need them.
        """
        if requirement == ANY_GPU:
            by_free = self._by_free
            for free_count in range(count, len(by_free)):
                if by_free[free_count]:
                    return by_free[free_count][0]
            return None
        best: str | None = None
        best_count = 0
        for runner_id, matching in self._candidates_for(requirement):
            free = self._free[runner_id]
            if len(free) < count:
                continue
            free_count = len(free & matching)
            if free_count >= count and (best is None or free_count < best_count):
                best, best_count = runner_id, free_count
        return best

    def fit_gang(self, count: int, requirement: Requirement) -> tuple[str, ...] | None:
        """The runners a multi-node job takes now, ``count`` free matching GPUs on each.

        Among the runners that fit, the set sharing the most labels wins (hosts of one rack
        or one switch talk faster), then the tightest fit, then the lowest runner ids.
        Rank 0 is the first runner of the result.
        """
        nodes = requirement.nodes
        fitting: list[tuple[int, str]] = []
        for runner_id, matching in self._candidates_for(requirement):
            free_count = len(self._free[runner_id] & matching)
            if free_count >= count:
                fitting.append((free_count, runner_id))
        if len(fitting) < nodes:
            return None
        return _best_gang(fitting, nodes, {r: self._hosts[r].labels for _, r in fitting})

    def plan_gang_reservation(
        self, count: int, requirement: Requirement, now: float
    ) -> tuple[GangHosts, float] | None:
        """Where a blocked multi-node job will fit first: one ``(runner_id, gpu_ids)`` per
        rank and the start, the time the last of them frees (see ``plan_reservation``)."""
        nodes = requirement.nodes
        ranked: list[tuple[_ReservationKey, tuple[int, ...], float]] = []
        for runner_id, matching in self._candidates_for(requirement):
            if len(matching) < count:
                continue
            times = [entry for entry in self._gpu_times(runner_id) if entry[2] in matching]
            first = times[:count]
            ranked.append(
                (
                    _reservation_key(runner_id, first),
                    tuple(sorted(index for _, _, index in first)),
                    first[-1][0],
                )
            )
        if len(ranked) < nodes:
            return None
        ranked.sort()
        chosen = ranked[:nodes]
        start = max(now, *(time for _, _, time in chosen))
        return tuple((key[1], gpu_ids) for key, gpu_ids, _ in chosen), start

    def choose_gpus(self, runner_id: str, count: int, requirement: Requirement) -> tuple[int, ...]:
        info = self._hosts[runner_id]
        free = self._free[runner_id]
        candidates = free if requirement == ANY_GPU else free & info.matching(requirement)
        return select_gpus((info.gpus[i] for i in candidates), count)

    def plan_reservation(
        self,
        count: int,
        requirement: Requirement,
        now: float,
    ) -> tuple[str, tuple[int, ...], float] | None:
        """Where a blocked gang will fit first: ``(runner_id, gpu_ids, start)``.

        A host's start is the time its ``count``-th matching GPU frees (free GPUs count as
        ``now``; held ones free when their job ends; GPUs held by foreign processes or by jobs
        of unknown length never, as far as anyone knows). Ties, including the case where every
        host is "never", go to the host whose other GPUs free sooner, then to the lowest
        runner id, so the same state always reserves the same GPUs.
        """
        if requirement == ANY_GPU:
            runner_id = self._best_for_reservation(count)
            if runner_id is None:
                return None
            first = self._gpu_times(runner_id)[:count]
        else:
            best: tuple[_ReservationKey, list[_GpuTime]] | None = None
            for runner_id, info in self._hosts.items():
                matching = info.matching(requirement)
                if len(matching) < count:
                    continue
                times = [entry for entry in self._gpu_times(runner_id) if entry[2] in matching]
                key = _reservation_key(runner_id, times[:count])
                if best is None or key < best[0]:
                    best = (key, times[:count])
            if best is None:
                return None
            (_, runner_id), first = best
        return runner_id, tuple(sorted(index for _, _, index in first)), max(first[-1][0], now)

    def clone(self) -> Occupancy:
        """An independent copy for what-if simulation; snapshot data is shared, not copied."""
        copy = Occupancy.__new__(Occupancy)
        copy._threshold = self._threshold
        copy._hosts = dict(self._hosts)
        copy._free = {runner_id: set(free) for runner_id, free in self._free.items()}
        copy._holders = {
            runner_id: {index: set(jobs) for index, jobs in held.items()}
            for runner_id, held in self._holders.items()
        }
        copy._jobs = dict(self._jobs)
        copy._ranks = {job_id: list(keys) for job_id, keys in self._ranks.items()}
        copy._ends = dict(self._ends)
        copy._reserved = dict(self._reserved)
        copy._by_free = [list(runners) for runners in self._by_free]
        copy._total_free = self._total_free
        copy._times = dict(self._times)  # the lists are replaced, never changed in place
        copy._capacity = dict(self._capacity)
        copy._candidates = dict(self._candidates)
        copy._reservation_heaps = {n: list(heap) for n, heap in self._reservation_heaps.items()}
        copy._stale_for = {n: set(runners) for n, runners in self._stale_for.items()}
        copy._stamps = dict(self._stamps)
        copy._stamp = self._stamp
        copy._layouts = dict(self._layouts)
        return copy

    # --- index maintenance --------------------------------------------------------------

    def _refresh(self, runner_id: str) -> None:
        info = self._hosts.get(runner_id)
        if info is None:
            return
        self._changed(runner_id)
        self._layouts[runner_id] = self._stamp
        free = set(info.usable)
        held = self._holders.get(runner_id)
        if held:
            free.difference_update(held)
        reserved = self._reserved.get(runner_id)
        if reserved:
            free.difference_update(reserved)
        old = self._free.get(runner_id)
        self._free[runner_id] = free
        if old is not None:
            if len(old) == len(free):
                return
            self._unindex(runner_id, len(old))
        self._index(runner_id, len(free))

    def _changed(self, runner_id: str) -> None:
        self._times.pop(runner_id, None)
        self._stamp += 1
        self._stamps[runner_id] = self._stamp
        for stale in self._stale_for.values():
            stale.add(runner_id)

    def _best_for_reservation(self, count: int) -> str | None:
        """The best host for a reservation of ``count`` unconstrained GPUs, in O(log hosts)
        per host changed since the last query instead of O(hosts)."""
        heap = self._reservation_heaps.get(count)
        stale = self._stale_for.get(count)
        if heap is None or stale is None or len(heap) > 4 * len(self._hosts) + 64:
            heap = []
            stale = set(self._hosts)
            self._reservation_heaps[count] = heap
            self._stale_for[count] = stale
        for runner_id in stale:
            info = self._hosts.get(runner_id)
            if info is not None and len(info.healthy) >= count:
                key = _reservation_key(runner_id, self._gpu_times(runner_id)[:count])
                heapq.heappush(heap, (key, self._stamps[runner_id]))
        stale.clear()
        while heap:
            (_, runner_id), stamp = heap[0]
            if runner_id in self._hosts and self._stamps.get(runner_id) == stamp:
                return runner_id
            heapq.heappop(heap)
        return None

    def _index(self, runner_id: str, free_count: int) -> None:
        while len(self._by_free) <= free_count:
            self._by_free.append([])
        insort(self._by_free[free_count], runner_id)
        self._total_free += free_count

    def _unindex(self, runner_id: str, free_count: int) -> None:
        runners = self._by_free[free_count]
        del runners[bisect_left(runners, runner_id)]
        self._total_free -= free_count

    def _candidates_for(self, requirement: Requirement) -> list[tuple[str, frozenset[int]]]:
        found = self._candidates.get(requirement)
        if found is None:
            found = []
            for runner_id in sorted(self._hosts):
                matching = self._hosts[runner_id].matching(requirement)
                if matching:
                    found.append((runner_id, matching))
            self._candidates[requirement] = found
        return found

    def _gpu_times(self, runner_id: str) -> list[_GpuTime]:
        found = self._times.get(runner_id)
        if found is None:
            info = self._hosts[runner_id]
            free = self._free[runner_id]
            held = self._holders.get(runner_id, {})
            found = []
            for index in info.healthy:
                if index in free:
                    time = _FREE_NOW
                elif index in held and index in info.usable:
                    time = max(self._ends[job_id] for job_id in held[index])
                else:
                    time = INFINITY
                found.append((time, info.preference[index], index))
            found.sort()
            self._times[runner_id] = found
        return found


def _best_gang(
    fitting: list[tuple[int, str]], nodes: int, labels: dict[str, dict[str, str]]
) -> tuple[str, ...]:
    """The ``nodes`` runners to take among those that fit: most labels in common, then the
    fewest free GPUs in all (the tightest fit), then the lowest ids; sorted by id."""
    fitting = sorted(fitting)
    best: tuple[tuple[int, int, tuple[str, ...]], tuple[str, ...]] | None = None
    for free_count, anchor in fitting:
        others = sorted(
            (item for item in fitting if item[1] != anchor),
            key=lambda item: (-shared_labels(labels[anchor], labels[item[1]]), item),
        )[: nodes - 1]
        chosen = tuple(sorted((anchor, *(runner_id for _, runner_id in others))))
        common = dict(labels[chosen[0]])
        for runner_id in chosen[1:]:
            common = {k: v for k, v in common.items() if labels[runner_id].get(k) == v}
        key = (-len(common), free_count + sum(count for count, _ in others), chosen)
        if best is None or key < best[0]:
            best = (key, chosen)
    assert best is not None
    return best[1]


def _reservation_key(runner_id: str, first: list[_GpuTime]) -> _ReservationKey:
    """Earliest N-th free time first; then sooner frees for the rest; then the runner id.

    Free GPUs keep their "free now" time (minus infinity) rather than the clock's "now", so
    the key of a host does not change as the clock moves and can be kept in a heap.
    """
    return (tuple(sorted((time for time, _, _ in first), reverse=True)), runner_id)
