"""Preemption: which running jobs a queued job of higher priority may stop to take their GPUs.

All of it is pure. The shell turns each job holding GPUs into ``VictimFacts`` at every
pass (``victim_facts``: the clock is a parameter), and the placement core asks
``find_preemption`` for a queued job that fits nowhere now. The rules, in full:

1. A victim has strictly lower priority than the job that needs its GPUs; fair share
   between owners at equal priority never preempts.
2. It is preemptible (``preemptible: true`` in its spec), running (not scheduled, not
   already stopping), has run at least ``min_runtime_s`` in its current attempt, and was
   preempted fewer than ``max_per_hour`` times in the last hour.
3. A job whose estimated end comes sooner than its grace is waited for, never preempted:
   its GPUs count as free soon, as do the GPUs of jobs already stopping. When free and
   soon-free GPUs already suffice on some host, nobody is preempted: the job waits.
4. The victims are all on one host and, with its free GPUs, free enough GPUs there (gang
   placement; GPUs that free soon are not counted on, so two plans never share one).
   On each host the victims are taken lowest priority first, then least work lost since
   their last checkpoint, until enough GPUs are free; any victim the others make
   unnecessary is let off again. Among hosts, the set whose highest priority is lowest
   wins, then the least work lost, then the fewest victims, then the lowest runner id.
5. A job over its owner's ``max_gpus`` preempts nobody.
6. A multi-node job of ``nodes`` N needs N hosts with room: hosts whose GPUs are free now
   count first, and rule 4 makes room on as many others as are missing. The cheapest
   hosts win by the same order (the highest priority among all victims, then the work
   lost, then the victims); a host whose GPUs free soon means waiting, as in rule 3.

The result names the GPUs the preemptor will start on; the core holds them for it (no
backfill takes them) until the victims have stopped. See docs/preemption.md.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from datetime import datetime, timedelta
from typing import Final

import msgspec

from swift_trainer.core.job import JobState, JobStatus

#: How far back ``max_per_hour`` looks.
HOUR: Final = timedelta(hours=1)
DEFAULT_MIN_RUNTIME_S: Final = 600.0
DEFAULT_MAX_PER_HOUR: Final = 2
DEFAULT_GRACE_S: Final = 120.0


class PreemptionPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Operator settings (``SCHEDULER_PREEMPTION``, ``PREEMPT_*``); off unless enabled."""

    enabled: bool = False
    min_runtime_s: float = DEFAULT_MIN_RUNTIME_S
    max_per_hour: int = DEFAULT_MAX_PER_HOUR
    grace_s: float = DEFAULT_GRACE_S


class VictimFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What the rules need of one job holding GPUs, as of the pass.

    ``eligible`` sums up rule 2 (preemptible, running, past its minimum runtime, under the
    hourly cap); ``soon`` says its GPUs free within its grace without a preemption (it is
    stopping, or its estimated end comes sooner than its grace).
    """

    job_id: str
    attempt: int
    priority: int
    eligible: bool
    soon: bool = False
    lost_work_s: float = 0.0
    grace_s: float = DEFAULT_GRACE_S


class Victim(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    attempt: int
    priority: int
    lost_work_s: float
    grace_s: float
    #: The host whose GPUs its stop frees for the preemptor ("": the plan's first host).
    runner_id: str = ""


class PreemptionPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Stop ``victims`` so that ``job_id`` starts on ``gpu_ids`` of ``runner_id`` (and, for
    a multi-node job, its other ranks on ``peers``)."""

    job_id: str
    priority: int
    runner_id: str
    gpu_ids: tuple[int, ...]
    victims: tuple[Victim, ...]
    #: A multi-node preemptor's ranks past rank 0: ``(runner_id, gpu_ids)``, rank 1 first.
    peers: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @property
    def hosts(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """Every rank's host and GPUs, rank 0 first."""
        return ((self.runner_id, self.gpu_ids), *self.peers)

    def gpus_on(self, runner_id: str) -> tuple[int, ...]:
        """The GPUs the preemptor will take on one host (none if it takes no GPU there)."""
        return next((gpus for host, gpus in self.hosts if host == runner_id), ())

    def reason(self, victim: Victim) -> str:
        """The audit trail's words for one victim's stop."""
        return (
            f"preempted by {self.job_id} (priority {self.priority} > {victim.priority}) "
            f"on host {victim.runner_id or self.runner_id}"
        )

    @property
    def victim_ids(self) -> frozenset[str]:
        return frozenset(victim.job_id for victim in self.victims)


class HostGpus(msgspec.Struct, frozen=True, kw_only=True):
    """One live host as the search sees it: GPUs usable for the job, which are free, and
    who holds each of the others."""

    runner_id: str
    usable: frozenset[int]
    free: frozenset[int]
    holders: Mapping[int, frozenset[str]]


class Wait(msgspec.Struct, frozen=True):
    """The search's verdict when free and soon-free GPUs already suffice on a host (on
    enough hosts, for a multi-node job): the job waits for them, and no job after it in the
    pass may take them for a preemption."""

    runner_id: str
    #: The other hosts a multi-node job waits for.
    others: tuple[str, ...] = ()

    @property
    def runner_ids(self) -> tuple[str, ...]:
        return (self.runner_id, *self.others)


#: A host at a glance, whatever the preemptor: its free GPUs, its GPUs that free soon, and
#: for each GPU that a preemption could free, the highest priority among its holders
#: (sorted). It bounds a host's best plan before any victim is chosen.
HostSummary = tuple[int, int, list[int]]
#: Summaries by runner, then by the GPUs usable for the job (its constraints).
SummaryCache = MutableMapping[str, dict[frozenset[int], HostSummary]]


def victim_facts(
    state: JobState, now: datetime, policy: PreemptionPolicy, remaining_s: float | None
) -> VictimFacts:
    """Rule 2 and 3 for one job holding GPUs, at ``now`` (``remaining_s``: its estimate)."""
    spec = state.spec
    grace = policy.grace_s
    if spec is not None and spec.preempt_grace_s is not None:
        grace = spec.preempt_grace_s
    stopping = state.status is JobStatus.STOPPING
    since = state.run_since
    ran = 0.0 if since is None else max(0.0, (now - since).total_seconds())
    recent = sum(1 for at in state.preempted_at if now - at < HOUR)
    eligible = (
        spec is not None
        and spec.preemptible
        and state.status is JobStatus.RUNNING
        and since is not None
        and ran >= policy.min_runtime_s
        and recent < policy.max_per_hour
    )
    soon = stopping or (remaining_s is not None and remaining_s < grace)
    saved = state.checkpointed_at
    lost_from = since if saved is None or (since is not None and saved < since) else saved
    lost = 0.0 if lost_from is None else max(0.0, (now - lost_from).total_seconds())
    return VictimFacts(
        job_id=state.job_id,
        attempt=state.attempt,
        priority=state.priority,
        eligible=eligible and not soon,
        soon=soon,
        lost_work_s=lost,
        grace_s=grace,
    )


def find_preemption(
    job_id: str,
    priority: int,
    count: int,
    hosts: Iterable[HostGpus],
    facts: Mapping[str, VictimFacts],
    *,
    nodes: int = 1,
    taken: frozenset[str] | set[str] = frozenset(),
    cache: SummaryCache | None = None,
) -> PreemptionPlan | Wait | None:
    """The cheapest plan that makes room for a job of ``count`` GPUs at ``priority`` (on
    each of ``nodes`` hosts).

    Returns ``Wait`` when some host will have room within the grace without preempting,
    and None when no set of victims would do. ``taken``: jobs already chosen as victims
    this pass, which no second plan may count on. ``cache``: host summaries kept by a
    caller that searches several times over the same hosts (it drops a host's entry when
    the host or the victims taken there change).

    Hosts are tried in order of the lowest priority their plan could have (a bound from
    the summary), and the search stops once that bound exceeds the best plan found.
    """
    if nodes > 1:
        return _find_gang_preemption(
            job_id, priority, count, nodes=nodes, hosts=hosts, facts=facts, taken=taken
        )
    bounded = []
    for host in hosts:
        if len(host.usable) < count:
            continue
        known = None if cache is None else cache.setdefault(host.runner_id, {})
        summary = None if known is None else known.get(host.usable)
        if summary is None:
            summary = _summary(host, facts, taken)
            if known is not None:
                known[host.usable] = summary
        free_count, soon_count, gates = summary
        if free_count + soon_count >= count:
            return Wait(host.runner_id)
        need = count - free_count
        if bisect_left(gates, priority) >= need:
            bounded.append((gates[need - 1], host.runner_id, host))
    bounded.sort(key=lambda entry: entry[:2])
    best: tuple[tuple[int, float, int, str], PreemptionPlan] | None = None
    for bound, _, host in bounded:
        if best is not None and bound > best[0][0]:
            break
        room = _room_on(host, priority, count, facts, taken)
        if room is None:
            continue
        key, gpu_ids, chosen = room
        if best is None or key < best[0]:
            plan = PreemptionPlan(
                job_id=job_id,
                priority=priority,
                runner_id=host.runner_id,
                gpu_ids=gpu_ids,
                victims=chosen,
            )
            best = (key, plan)
    return None if best is None else best[1]


#: How a host's room compares: highest victim priority, work lost, victims, runner id.
_RoomKey = tuple[int, float, int, str]


def _room_on(
    host: HostGpus,
    priority: int,
    count: int,
    facts: Mapping[str, VictimFacts],
    taken: frozenset[str] | set[str],
) -> tuple[_RoomKey, tuple[int, ...], tuple[Victim, ...]] | None:
    """The cheapest victims on one host that free ``count`` GPUs there, with the GPUs."""
    free, _, candidates = _classify(host, priority, facts, taken)
    chosen = _choose(host, count, len(free), candidates)
    if chosen is None:
        return None
    freed = _freed(host, {v.job_id for v in chosen})
    gpu_ids = tuple(sorted([*sorted(free), *sorted(freed)][:count]))
    key = (
        max(v.priority for v in chosen),
        sum(v.lost_work_s for v in chosen),
        len(chosen),
        host.runner_id,
    )
    return key, gpu_ids, tuple(chosen)


def _find_gang_preemption(
    job_id: str,
    priority: int,
    count: int,
    *,
    nodes: int,
    hosts: Iterable[HostGpus],
    facts: Mapping[str, VictimFacts],
    taken: frozenset[str] | set[str],
) -> PreemptionPlan | Wait | None:
    """Rule 6: free hosts first, then room made on the cheapest others.

    The hosts to preempt on are those of the lowest highest-priority that can supply the
    missing count, and among those the ones losing the least work: the plan's highest
    priority is then as low as any plan's, and its work lost the least at that priority.
    """
    views = {host.runner_id: host for host in hosts}
    ready: list[str] = []
    soon: list[str] = []
    rooms: list[tuple[_RoomKey, tuple[int, ...], tuple[Victim, ...]]] = []
    for host in sorted(views.values(), key=lambda h: h.runner_id):
        if len(host.usable) < count:
            continue
        free, soon_gpus, _ = _classify(host, priority, facts, taken)
        if len(free) >= count:
            ready.append(host.runner_id)
        elif len(free) + len(soon_gpus) >= count:
            soon.append(host.runner_id)
        else:
            room = _room_on(host, priority, count, facts, taken)
            if room is not None:
                rooms.append(room)
    if len(ready) + len(soon) >= nodes:
        waited = [*soon, *ready][:nodes]
        return Wait(waited[0], tuple(waited[1:]))
    missing = nodes - len(ready)
    if len(rooms) < missing:
        return None
    ceiling = sorted(room[0][0] for room in rooms)[missing - 1]
    affordable = sorted(
        (room for room in rooms if room[0][0] <= ceiling), key=lambda room: room[0][1:]
    )
    chosen = affordable[:missing]
    by_host: dict[str, tuple[int, ...]] = {room[0][3]: room[1] for room in chosen}
    for runner_id in ready:
        view = views[runner_id]
        by_host[runner_id] = tuple(sorted(view.free & view.usable))[:count]
    ranks = sorted(by_host.items())
    victims = tuple(victim for room in chosen for victim in room[2])
    (head, head_gpus), peers = ranks[0], tuple(ranks[1:])
    return PreemptionPlan(
        job_id=job_id,
        priority=priority,
        runner_id=head,
        gpu_ids=head_gpus,
        victims=victims,
        peers=peers,
    )


def _summary(
    host: HostGpus, facts: Mapping[str, VictimFacts], taken: frozenset[str] | set[str]
) -> HostSummary:
    free = len(host.usable & host.free)
    soon = 0
    gates = []
    for index in host.usable - host.free:
        holders = host.holders.get(index, frozenset())
        if not holders:
            continue
        known = [facts.get(h) for h in holders]
        if all(_is_soon(f, taken) for f in known):
            soon += 1
        elif all(f is not None and f.eligible and f.job_id not in taken for f in known):
            gates.append(max(f.priority for f in known if f is not None))
    gates.sort()
    return free, soon, gates


def _classify(
    host: HostGpus,
    priority: int,
    facts: Mapping[str, VictimFacts],
    taken: frozenset[str] | set[str],
) -> tuple[set[int], set[int], list[Victim]]:
    """A host's free GPUs, its GPUs that free soon, and the jobs that may be preempted."""
    free = set(host.usable & host.free)
    soon: set[int] = set()
    candidates: dict[str, Victim] = {}
    for index in host.usable - host.free:
        holders = host.holders.get(index, frozenset())
        if not holders:
            continue  # reserved by a plan of this pass: not free, not obtainable
        if all(_is_soon(facts.get(h), taken) for h in holders):
            soon.add(index)
            continue
        for holder in holders:
            fact = facts.get(holder)
            if (
                fact is not None
                and fact.eligible
                and fact.priority < priority
                and holder not in taken
            ):
                candidates[holder] = Victim(
                    job_id=holder,
                    attempt=fact.attempt,
                    priority=fact.priority,
                    lost_work_s=fact.lost_work_s,
                    grace_s=fact.grace_s,
                    runner_id=host.runner_id,
                )
    ordered = sorted(candidates.values(), key=lambda v: (v.priority, v.lost_work_s, v.job_id))
    return free, soon, ordered


def _is_soon(fact: VictimFacts | None, taken: frozenset[str] | set[str]) -> bool:
    return fact is not None and fact.soon and fact.job_id not in taken


def _freed(host: HostGpus, victims: set[str]) -> set[int]:
    """GPUs of ``host`` that are busy now and free once ``victims`` have stopped."""
    freed = set()
    for index in host.usable - host.free:
        holders = host.holders.get(index, frozenset())
        if holders and holders <= victims:
            freed.add(index)
    return freed


def _choose(
    host: HostGpus, count: int, available: int, candidates: Sequence[Victim]
) -> list[Victim] | None:
    """Victims taken cheapest first until ``count`` GPUs are obtainable; then any victim
    the others make unnecessary is let off, the dearest first."""
    chosen: list[Victim] = []
    ids: set[str] = set()
    for victim in candidates:
        chosen.append(victim)
        ids.add(victim.job_id)
        if available + len(_freed(host, ids)) >= count:
            break
    else:
        return None
    for victim in reversed(list(chosen)):
        rest = ids - {victim.job_id}
        if rest and available + len(_freed(host, rest)) >= count:
            chosen.remove(victim)
            ids = rest
    return chosen
