"""Placement of multi-node jobs and host labels: unit cases, then hypothesis against brute force.

The properties: a multi-node job is placed on all its runners in one decision or not at all,
never with two ranks on one runner, only on runners carrying its host labels, on a set of
runners sharing as many labels as any feasible set; ``unplaceable`` means exactly "no set
of ``nodes`` matching runners with ``gpu_count`` GPUs each"; and a 2-node job at the head
of the queue is not starved by a stream of 1-GPU jobs behind it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from swift_trainer.core.gang import RankPlacement
from swift_trainer.projections.scheduler import (
    Decision,
    HostSnapshot,
    PlacementCore,
    QueuedJob,
    RunningJob,
    place_jobs,
)

from .builders import host, job

replace = msgspec.structs.replace


def labelled(runner_id: str, count: int, **labels: str) -> HostSnapshot:
    return replace(host(runner_id, count), labels=labels)


def gang(job_id: str, nodes: int, gpus: int, **kwargs: object) -> QueuedJob:
    labels = kwargs.pop("labels", {})
    assert isinstance(labels, dict)
    return replace(job(job_id, gpus=gpus, **kwargs), nodes=nodes, host_labels=labels)  # type: ignore[arg-type]


def ranks(decision: Decision) -> list[tuple[str, tuple[int, ...]]]:
    return [(decision.runner_id, decision.gpu_ids)] + [
        (peer.runner_id, peer.gpu_ids) for peer in decision.peers
    ]


# --- unit cases -----------------------------------------------------------------------------


def test_a_two_node_job_takes_two_runners_in_one_decision() -> None:
    result = place_jobs([gang("g", 2, 2)], [host("a", 2), host("b", 2)])
    (decision,) = result.decisions
    assert ranks(decision) == [("a", (0, 1)), ("b", (0, 1))]
    assert decision.peers == (
        RankPlacement(rank=1, runner_id="b", gpu_ids=(0, 1), gpu_uuids=("GPU-b-0", "GPU-b-1")),
    )
    claim = decision.claim_command()
    assert (claim.runner_id, claim.peers) == ("a", decision.peers)
    assert decision.to_command().peers == decision.peers


def test_a_gang_that_does_not_fit_takes_nothing() -> None:
    running = [RunningJob(job_id="busy", runner_id="b", gpu_ids=(0,), remaining_s=50)]
    result = place_jobs([gang("g", 2, 2)], [host("a", 2), host("b", 2)], running)
    assert result.decisions == ()
    (reservation,) = result.reservations
    assert reservation.job_id == "g"
    assert {reservation.runner_id, *(p.runner_id for p in reservation.peers)} == {"a", "b"}
    assert reservation.expected_start_s == 50


def test_runners_sharing_a_rack_are_preferred() -> None:
    hosts = [
        labelled("a", 2, rack="r1"),
        labelled("b", 2, rack="r2"),
        labelled("c", 2, rack="r2"),
    ]
    (decision,) = place_jobs([gang("g", 2, 2)], hosts).decisions
    assert [r for r, _ in ranks(decision)] == ["b", "c"]


def test_host_labels_pick_runners_for_one_node_jobs_too() -> None:
    hosts = [labelled("a", 4, pool="spot"), labelled("b", 4, pool="reserved")]
    j = replace(job("j"), host_labels={"pool": "reserved"})
    (decision,) = place_jobs([j], hosts).decisions
    assert decision.runner_id == "b"


def test_a_label_no_runner_has_is_unplaceable_with_the_label_named() -> None:
    j = replace(job("j"), host_labels={"pool": "gold"})
    result = place_jobs([j], [labelled("a", 4, pool="spot")])
    (unplaceable,) = result.unplaceable
    assert "pool=gold" in unplaceable.reason


def test_too_few_runners_is_unplaceable_and_says_how_many() -> None:
    result = place_jobs([gang("g", 3, 2)], [host("a", 8), host("b", 8)])
    (unplaceable,) = result.unplaceable
    assert "needs 3 runners with 2 GPUs each" in unplaceable.reason


def test_a_gang_counts_all_its_gpus_against_its_owner_quota() -> None:
    g = gang("g", 2, 2, owner="ann")
    blocked = place_jobs([g], [host("a", 2), host("b", 2)], max_gpus={"ann": 3})
    assert blocked.decisions == ()
    placed = place_jobs([g], [host("a", 2), host("b", 2)], max_gpus={"ann": 4})
    assert len(placed.decisions) == 1


def test_the_queue_view_shows_nodes_and_a_wait_for_a_gang() -> None:
    running = [RunningJob(job_id="busy", runner_id="b", gpu_ids=(0,), remaining_s=30)]
    result = place_jobs([gang("g", 2, 2, duration=10.0)], [host("a", 2), host("b", 2)], running)
    (slot,) = result.queue
    assert (slot.nodes, slot.gpu_count, slot.estimated_wait_s) == (2, 2, 30)


def test_a_released_gang_frees_every_rank() -> None:
    scheduler = PlacementCore()
    for h in (host("a", 2), host("b", 2)):
        scheduler.update_host(h)
    scheduler.submit(gang("g", 2, 2))
    assert len(scheduler.place().decisions) == 1
    assert scheduler.jobs_on("b") == ("g",)
    scheduler.release("g")
    assert scheduler.jobs_on("a") == scheduler.jobs_on("b") == ()
    scheduler.submit(job("one", gpus=2))
    assert [d.job_id for d in scheduler.place().decisions] == ["one"]


# --- hypothesis against brute force ---------------------------------------------------------

RUNNERS = ("r1", "r2", "r3", "r4", "r5")
RACKS = ("x", "y")


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[HostSnapshot], list[RunningJob]]:
    count = draw(st.integers(1, len(RUNNERS)))
    hosts = []
    running = []
    for runner_id in RUNNERS[:count]:
        size = draw(st.integers(1, 4))
        labels = {}
        if draw(st.booleans()):
            labels["rack"] = draw(st.sampled_from(RACKS))
        if draw(st.booleans()):
            labels["pool"] = "gold"
        hosts.append(labelled(runner_id, size, **labels))
        busy = draw(st.integers(0, size))
        if busy:
            running.append(
                RunningJob(
                    job_id=f"busy-{runner_id}",
                    runner_id=runner_id,
                    gpu_ids=tuple(range(busy)),
                    remaining_s=draw(st.sampled_from([None, 5.0, 20.0])),
                )
            )
    return hosts, running


@st.composite
def queues(draw: st.DrawFn) -> list[QueuedJob]:
    jobs = []
    for i in range(draw(st.integers(1, 6))):
        nodes = draw(st.integers(1, 3))
        labels = draw(st.sampled_from([{}, {}, {"pool": "gold"}, {"rack": "x"}]))
        jobs.append(
            replace(
                job(f"j{i}", gpus=draw(st.integers(1, 3)), priority=draw(st.integers(4, 6))),
                nodes=nodes,
                host_labels=labels,
            )
        )
    return jobs


def carries(h: HostSnapshot, labels: Mapping[str, str]) -> bool:
    return all(h.labels.get(k) == v for k, v in labels.items())


def feasible_sets(
    hosts: list[HostSnapshot], free: Mapping[str, int], j: QueuedJob
) -> list[tuple[HostSnapshot, ...]]:
    """Every set of ``nodes`` runners with ``gpu_count`` free matching GPUs each."""
    fitting = [h for h in hosts if carries(h, j.host_labels) and free[h.runner_id] >= j.gpu_count]
    return list(itertools.combinations(fitting, j.nodes))


def common_labels(chosen: tuple[HostSnapshot, ...]) -> int:
    first = dict(chosen[0].labels)
    for h in chosen[1:]:
        first = {k: v for k, v in first.items() if h.labels.get(k) == v}
    return len(first)


@settings(max_examples=300, deadline=None)
@given(clusters(), queues())
def test_one_pass_is_all_or_nothing_and_agrees_with_brute_force(
    cluster: tuple[list[HostSnapshot], list[RunningJob]], queued: list[QueuedJob]
) -> None:
    hosts, running = cluster
    by_id = {h.runner_id: h for h in hosts}
    held = {(r.runner_id, g) for r in running for g in r.gpu_ids}
    free = {h.runner_id: sum((h.runner_id, g.index) not in held for g in h.gpus) for h in hosts}
    jobs = {j.job_id: j for j in queued}
    result = place_jobs(queued, hosts, running)
    taken: set[tuple[str, int]] = set(held)
    for decision in result.decisions:
        j = jobs[decision.job_id]
        placed = ranks(decision)
        # Never partial, never two ranks on one runner, every rank its share of GPUs.
        assert len(placed) == j.nodes
        assert len({runner for runner, _ in placed}) == j.nodes
        assert [p.rank for p in decision.peers] == list(range(1, j.nodes))
        for runner_id, gpu_ids in placed:
            assert len(set(gpu_ids)) == j.gpu_count
            assert carries(by_id[runner_id], j.host_labels)
            for g in gpu_ids:
                assert (runner_id, g) not in taken, "a GPU was handed out twice"
                taken.add((runner_id, g))
    # The head of the queue is placed exactly when a feasible set exists, on a set that
    # shares as many labels as the best feasible one.
    head = min(queued, key=lambda j: (-j.priority, j.seq))
    options = feasible_sets(hosts, free, head)
    first = result.decisions[0] if result.decisions else None
    if options:
        assert first is not None and first.job_id == head.job_id
        chosen = tuple(by_id[r] for r, _ in ranks(first))
        if head.nodes > 1:
            assert common_labels(chosen) == max(common_labels(o) for o in options)
    else:
        assert first is None or first.job_id != head.job_id
    # Unplaceable means: no set of ``nodes`` matching runners that big, busy or not.
    everything = {h.runner_id: len(h.gpus) for h in hosts}
    for slot in result.queue:
        j = jobs[slot.job_id]
        assert (slot.unplaceable is not None) == (not feasible_sets(hosts, everything, j))


@settings(max_examples=150, deadline=None)
@given(
    initial=st.lists(st.integers(1, 8), min_size=1, max_size=4),
    arrivals=st.lists(
        st.lists(st.integers(1, 8), max_size=3),  # durations of 1-GPU jobs per tick
        min_size=1,
        max_size=20,
    ),
    rack_b=st.sampled_from(["x", "y"]),
)
def test_a_two_node_job_is_not_starved_by_a_stream_of_one_gpu_jobs(
    initial: list[int], arrivals: list[list[int]], rack_b: str
) -> None:
    """1-GPU jobs keep arriving behind a 2-node x 2-GPU job; it starts once the jobs that
    ran when it came have ended, whatever the stream does."""
    scheduler = PlacementCore()
    scheduler.update_host(labelled("a", 2, rack="x"))
    scheduler.update_host(labelled("b", 2, rack=rack_b))
    ends: dict[str, float] = {}
    slots = [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    for i, duration in enumerate(initial):
        runner_id, index = slots[i]
        scheduler.assign(
            RunningJob(
                job_id=f"old{i}", runner_id=runner_id, gpu_ids=(index,), remaining_s=duration
            )
        )
        ends[f"old{i}"] = duration
    bound = max(initial)
    scheduler.submit(gang("g", 2, 2, seq=1, duration=5.0))
    seq = 2
    now = 0.0
    started_at = None
    for tick in range(bound + 2):
        now = float(tick)
        for job_id in [j for j, end in ends.items() if end <= now]:
            scheduler.release(job_id)
            del ends[job_id]
        for job_id, end in ends.items():
            scheduler.set_remaining(job_id, end - now)
        for duration in arrivals[tick % len(arrivals)]:
            scheduler.submit(job(f"s{seq}", seq=seq, duration=float(duration)))
            seq += 1
        for decision in scheduler.place().decisions:
            if decision.job_id == "g":
                started_at = now
                ends["g"] = now + 5.0
            else:
                ends[decision.job_id] = now + scheduler.running_job(decision.job_id).remaining_s  # type: ignore[union-attr,operator]
        if started_at is not None:
            break
    assert started_at is not None and started_at <= bound
