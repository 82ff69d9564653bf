"""The preemption rules, one test each, and the search against a brute-force reference."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from swift_trainer.core.gang import RankPlacement
from swift_trainer.core.job import JobState, JobStatus
from swift_trainer.core.spec import JobSpec
from swift_trainer.projections.scheduler import PlacementCore, RunningJob
from swift_trainer.projections.scheduler.placement import PlacementPolicy
from swift_trainer.projections.scheduler.preemption import (
    HostGpus,
    PreemptionPlan,
    PreemptionPolicy,
    VictimFacts,
    Wait,
    find_preemption,
    victim_facts,
)

from .builders import host, job

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
ON = PlacementPolicy(preemption=PreemptionPolicy(enabled=True, min_runtime_s=600))


def facts(job_id: str, priority: int, *, eligible: bool = True, lost: float = 0.0) -> VictimFacts:
    return VictimFacts(
        job_id=job_id, attempt=1, priority=priority, eligible=eligible, lost_work_s=lost
    )


def view(runner_id: str, holders: dict[int, str], gpus: int = 2) -> HostGpus:
    return HostGpus(
        runner_id=runner_id,
        usable=frozenset(range(gpus)),
        free=frozenset(i for i in range(gpus) if i not in holders),
        holders={i: frozenset({h}) for i, h in holders.items()},
    )


# --- victim facts (rules 2 and 3) -----------------------------------------------------------


def running_state(**changes: object) -> JobState:
    spec = JobSpec(data_path="d", model_path="m", output_dir="o", priority=2)
    state = JobState(
        job_id="low",
        status=JobStatus.RUNNING,
        spec=spec,
        priority=2,
        attempt=1,
        runner_id="a",
        gpu_ids=(0,),
        run_since=NOW - timedelta(seconds=900),
    )
    return msgspec.structs.replace(state, **changes)


POLICY = PreemptionPolicy(enabled=True, min_runtime_s=600, max_per_hour=2, grace_s=120)


def test_a_running_preemptible_job_past_its_minimum_is_eligible() -> None:
    fact = victim_facts(running_state(), NOW, POLICY, None)
    assert fact.eligible and not fact.soon
    assert fact.lost_work_s == 900, "no checkpoint: everything since the start is lost"


def test_a_job_marked_not_preemptible_is_never_eligible() -> None:
    spec = JobSpec(data_path="d", model_path="m", output_dir="o", preemptible=False)
    assert not victim_facts(running_state(spec=spec), NOW, POLICY, None).eligible


def test_a_job_short_of_its_minimum_runtime_in_this_attempt_is_not_eligible() -> None:
    state = running_state(run_since=NOW - timedelta(seconds=599), runtime_s=10_000.0)
    assert not victim_facts(state, NOW, POLICY, None).eligible


def test_a_job_preempted_its_hourly_cap_is_not_eligible_until_an_hour_has_passed() -> None:
    times = (NOW - timedelta(minutes=50), NOW - timedelta(minutes=20))
    state = running_state(preempted_at=times, preemptions=2)
    assert not victim_facts(state, NOW, POLICY, None).eligible
    later = NOW + timedelta(minutes=11)
    assert victim_facts(state, later, POLICY, None).eligible


def test_a_job_ending_within_its_grace_is_waited_for_not_preempted() -> None:
    fact = victim_facts(running_state(), NOW, POLICY, remaining_s=60)
    assert fact.soon and not fact.eligible
    own_grace = JobSpec(data_path="d", model_path="m", output_dir="o", preempt_grace_s=30)
    fact = victim_facts(running_state(spec=own_grace), NOW, POLICY, remaining_s=60)
    assert fact.eligible and fact.grace_s == 30


def test_work_lost_counts_from_the_latest_checkpoint_of_this_attempt() -> None:
    state = running_state(checkpointed_at=NOW - timedelta(seconds=100))
    assert victim_facts(state, NOW, POLICY, None).lost_work_s == 100
    older = running_state(checkpointed_at=NOW - timedelta(days=1))
    assert victim_facts(older, NOW, POLICY, None).lost_work_s == 900


def test_a_stopping_or_scheduled_job_is_not_eligible() -> None:
    assert victim_facts(running_state(status=JobStatus.STOPPING), NOW, POLICY, None).soon
    scheduled = running_state(status=JobStatus.SCHEDULED, run_since=None)
    assert not victim_facts(scheduled, NOW, POLICY, None).eligible


# --- the search (rules 1, 3, 4) -------------------------------------------------------------


def test_only_strictly_lower_priority_jobs_are_victims() -> None:
    hosts = [view("a", {0: "x", 1: "y"})]
    known = {"x": facts("x", 5), "y": facts("y", 5)}
    assert find_preemption("p", 5, 1, hosts, known) is None, "equal priority never preempts"
    plan = find_preemption("p", 6, 1, hosts, known)
    assert isinstance(plan, PreemptionPlan)
    assert plan.reason(plan.victims[0]) == "preempted by p (priority 6 > 5) on host a"


def test_lowest_priority_first_then_least_work_lost() -> None:
    hosts = [view("a", {0: "x", 1: "y", 2: "z"}, gpus=3)]
    known = {"x": facts("x", 3, lost=10), "y": facts("y", 2, lost=500), "z": facts("z", 2)}
    plan = find_preemption("p", 9, 1, hosts, known)
    assert isinstance(plan, PreemptionPlan)
    assert [v.job_id for v in plan.victims] == ["z"]
    plan = find_preemption("p", 9, 2, hosts, known)
    assert isinstance(plan, PreemptionPlan)
    assert sorted(v.job_id for v in plan.victims) == ["y", "z"]


def test_victims_are_on_one_host_and_free_enough_there() -> None:
    hosts = [view("a", {0: "x"}, gpus=1), view("b", {0: "y"}, gpus=1)]
    known = {"x": facts("x", 1), "y": facts("y", 1)}
    assert find_preemption("p", 9, 2, hosts, known) is None, "two hosts of one GPU never do"
    hosts = [view("a", {0: "x", 1: "y"}), view("b", {0: "z"}, gpus=1)]
    known = {**known, "z": facts("z", 0)}
    plan = find_preemption("p", 9, 2, hosts, known)
    assert isinstance(plan, PreemptionPlan)
    assert (plan.runner_id, plan.gpu_ids, len(plan.victims)) == ("a", (0, 1), 2)


def test_a_free_gpu_counts_so_only_the_missing_ones_are_preempted() -> None:
    hosts = [view("a", {0: "x", 1: "y"}, gpus=3)]
    known = {"x": facts("x", 1), "y": facts("y", 2)}
    plan = find_preemption("p", 9, 2, hosts, known)
    assert isinstance(plan, PreemptionPlan)
    assert [v.job_id for v in plan.victims] == ["x"]
    assert plan.gpu_ids == (0, 2)


def test_a_host_with_room_within_the_grace_means_waiting() -> None:
    hosts = [view("a", {0: "x", 1: "soon"})]
    known = {
        "x": facts("x", 1),
        "soon": VictimFacts(job_id="soon", attempt=1, priority=1, eligible=False, soon=True),
    }
    assert find_preemption("p", 9, 1, hosts, known) == Wait("a")


def test_a_victim_made_unnecessary_by_a_bigger_one_is_let_off() -> None:
    a = HostGpus(
        runner_id="a",
        usable=frozenset({0, 1, 2}),
        free=frozenset(),
        holders={0: frozenset({"small"}), 1: frozenset({"big"}), 2: frozenset({"big"})},
    )
    known = {"small": facts("small", 1), "big": facts("big", 2)}
    plan = find_preemption("p", 9, 2, [a], known)
    assert isinstance(plan, PreemptionPlan)
    assert [v.job_id for v in plan.victims] == ["big"]


def test_a_job_already_taken_by_another_plan_is_not_counted_twice() -> None:
    hosts = [view("a", {0: "x", 1: "y"})]
    known = {"x": facts("x", 1), "y": facts("y", 1)}
    plan = find_preemption("p", 9, 2, hosts, known, taken={"x"})
    assert plan is None


# --- brute-force reference ------------------------------------------------------------------


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[HostGpus], dict[str, VictimFacts], int, int]:
    hosts, known, n = [], {}, itertools.count()
    for h in range(draw(st.integers(1, 3))):
        size = draw(st.integers(1, 4))
        holders: dict[int, frozenset[str]] = {}
        for index in range(size):
            if draw(st.booleans()):
                job_id = f"j{next(n)}"
                holders[index] = frozenset({job_id})
                known[job_id] = VictimFacts(
                    job_id=job_id,
                    attempt=1,
                    priority=draw(st.integers(0, 10)),
                    eligible=draw(st.booleans()),
                    soon=draw(st.integers(0, 4)) == 0,
                    lost_work_s=draw(st.integers(0, 3)),
                )
        free = frozenset(i for i in range(size) if i not in holders)
        hosts.append(
            HostGpus(runner_id=f"h{h}", usable=frozenset(range(size)), free=free, holders=holders)
        )
    return hosts, known, draw(st.integers(0, 10)), draw(st.integers(1, 4))


def brute_force(
    hosts: list[HostGpus], known: dict[str, VictimFacts], priority: int, count: int
) -> tuple[bool, bool]:
    """``(must wait, some valid victim set exists)`` by trying every subset."""
    valid = False
    for cand in hosts:
        soon = {i for i, h in cand.holders.items() if all(known[j].soon for j in h)}
        if len(cand.usable) >= count and len(cand.free) + len(soon) >= count:
            return True, False
        allowed = sorted(
            {
                j
                for h in cand.holders.values()
                for j in h
                if known[j].eligible and not known[j].soon and known[j].priority < priority
            }
        )
        for size in range(1, len(allowed) + 1):
            for subset in itertools.combinations(allowed, size):
                freed = {i for i, h in cand.holders.items() if h and h <= set(subset)}
                if len(cand.free) + len(freed) >= count:
                    valid = True
    return False, valid


@settings(max_examples=400, deadline=None)
@given(clusters())
def test_the_search_agrees_with_brute_force(
    case: tuple[list[HostGpus], dict[str, VictimFacts], int, int],
) -> None:
    hosts, known, priority, count = case
    must_wait, exists = brute_force(hosts, known, priority, count)
    found = find_preemption("p", priority, count, hosts, known)
    if must_wait:
        assert isinstance(found, Wait)
        return
    if not exists:
        assert found is None
        return
    assert isinstance(found, PreemptionPlan), "a job never waits for one it could preempt"
    target = next(h for h in hosts if h.runner_id == found.runner_id)
    ids = found.victim_ids
    for victim in found.victims:
        fact = known[victim.job_id]
        assert fact.priority < priority and fact.eligible and not fact.soon
        assert any(victim.job_id in h for h in target.holders.values()), "all on one host"
    assert len(found.gpu_ids) == count == len(set(found.gpu_ids))
    for index in found.gpu_ids:
        holders = target.holders.get(index, frozenset())
        assert holders <= ids, "only free GPUs and the victims' are promised"
    for victim in found.victims:  # minimal: no victim could be let off
        rest = ids - {victim.job_id}
        freed = {i for i, h in target.holders.items() if h and h <= rest}
        assert len(target.free) + len(freed) < count


# --- the core: plans, held GPUs, the preemptor's start ---------------------------------------


def busy_cluster() -> PlacementCore:
    scheduler = PlacementCore(ON)
    scheduler.update_host(host("a", 2))
    for i, name in enumerate(("low1", "low2")):
        scheduler.assign(RunningJob(job_id=name, runner_id="a", gpu_ids=(i,), priority=2))
    scheduler.set_victim_facts({n: facts(n, 2) for n in ("low1", "low2")})
    return scheduler


def test_a_blocked_urgent_job_preempts_and_starts_on_exactly_the_freed_gpus() -> None:
    scheduler = busy_cluster()
    scheduler.submit(job("urgent", priority=9, gpus=2))
    placement = scheduler.place()
    assert placement.decisions == ()
    (plan,) = placement.preemptions
    assert plan.victim_ids == {"low1", "low2"} and plan.gpu_ids == (0, 1)
    assert scheduler.place().preemptions == (), "a plan under way is not decided again"
    scheduler.release("low1")
    scheduler.submit(job("backfill", priority=1))
    assert scheduler.place().decisions == (), "the freed GPU is held for the preemptor"
    assert scheduler.place().decisions == (), "and stays held, pass after pass"
    assert "urgent" in scheduler.plans
    scheduler.release("low2")
    (decision,) = scheduler.place().decisions
    assert (decision.job_id, decision.runner_id, decision.gpu_ids) == ("urgent", "a", (0, 1))
    assert decision.gpu_uuids == ("GPU-a-0", "GPU-a-1") and decision.peers == ()
    assert scheduler.jobs_on("a") == ("urgent",), "the hold for the preemptor is gone"
    running = scheduler.running_job("urgent")
    assert running is not None and (running.runner_id, running.gpu_ids) == ("a", (0, 1))
    assert scheduler.gpus_in_use(None) == 2
    scheduler.release("urgent")
    assert scheduler.jobs_on("a") == () and scheduler.gpus_in_use(None) == 0


def test_preemption_off_never_plans() -> None:
    scheduler = busy_cluster()
    scheduler.policy = PlacementPolicy()
    scheduler.submit(job("urgent", priority=9, gpus=2))
    assert scheduler.place().preemptions == ()


def test_a_job_over_its_owners_quota_preempts_nobody() -> None:
    scheduler = busy_cluster()
    scheduler.set_quota("team", 1)
    scheduler.submit(job("urgent", priority=9, gpus=2, owner="team"))
    assert scheduler.place().preemptions == ()


def test_a_preemptor_leaving_the_queue_lets_its_gpus_go() -> None:
    scheduler = busy_cluster()
    scheduler.submit(job("urgent", priority=9, gpus=2))
    assert scheduler.place().preemptions
    scheduler.release("low1")
    scheduler.place()
    scheduler.remove("urgent")
    scheduler.submit(job("next", priority=1))
    (decision,) = scheduler.place().decisions
    assert decision.job_id == "next" and decision.gpu_ids == (0,)


def test_a_plan_whose_gpus_another_job_took_is_given_up() -> None:
    scheduler = busy_cluster()
    scheduler.submit(job("urgent", priority=9, gpus=2))
    assert scheduler.place().preemptions
    scheduler.release("low1")
    scheduler.assign(RunningJob(job_id="intruder", runner_id="a", gpu_ids=(0,), priority=1))
    scheduler.place()
    assert "urgent" not in scheduler.plans


# --- multi-node preemptors (rule 6) ---------------------------------------------------------


def test_a_multi_node_job_uses_a_free_host_and_makes_room_on_the_cheapest_other() -> None:
    hosts = [view("a", {}), view("b", {0: "x", 1: "x"}), view("c", {0: "y", 1: "y"})]
    known = {"x": facts("x", 3), "y": facts("y", 1, lost=900)}
    plan = find_preemption("p", 9, 2, hosts, known, nodes=2)
    assert isinstance(plan, PreemptionPlan)
    assert plan.hosts == (("a", (0, 1)), ("c", (0, 1)))
    assert [(v.job_id, v.runner_id) for v in plan.victims] == [("y", "c")]
    assert plan.gpus_on("c") == (0, 1) and plan.gpus_on("b") == ()
    assert plan.reason(plan.victims[0]).endswith("on host c")


def test_at_one_priority_the_hosts_losing_least_work_are_preempted() -> None:
    hosts = [view(r, {0: f"j{r}", 1: f"j{r}"}) for r in "abc"]
    known = {"ja": facts("ja", 2, lost=300), "jb": facts("jb", 2, lost=10), "jc": facts("jc", 1)}
    plan = find_preemption("p", 9, 2, hosts, known, nodes=2)
    assert isinstance(plan, PreemptionPlan)
    assert sorted(v.job_id for v in plan.victims) == ["jb", "jc"], "lowest top priority first"
    assert [runner for runner, _ in plan.hosts] == ["b", "c"]


def test_a_multi_node_job_waits_when_hosts_free_soon_suffice() -> None:
    soon = VictimFacts(job_id="s", attempt=1, priority=1, eligible=False, soon=True)
    hosts = [view("a", {}), view("b", {0: "s", 1: "s"}), view("c", {0: "x", 1: "x"})]
    known = {"s": soon, "x": facts("x", 1)}
    assert find_preemption("p", 9, 2, hosts, known, nodes=2) == Wait("b", ("a",))


def test_a_multi_node_job_preempts_nobody_when_too_few_hosts_can_be_freed() -> None:
    hosts = [view("a", {0: "x", 1: "x"}), view("b", {0: "hi", 1: "hi"})]
    known = {"x": facts("x", 1), "hi": facts("hi", 9)}
    assert find_preemption("p", 9, 2, hosts, known, nodes=2) is None


def gang_cluster() -> PlacementCore:
    scheduler = PlacementCore(ON)
    for runner_id in "ab":
        scheduler.update_host(host(runner_id, 2))
        scheduler.assign(
            RunningJob(job_id=f"low-{runner_id}", runner_id=runner_id, gpu_ids=(0, 1), priority=2)
        )
    scheduler.set_victim_facts({n: facts(n, 2) for n in ("low-a", "low-b")})
    return scheduler


def test_a_blocked_multi_node_job_frees_two_hosts_and_starts_on_both_at_once() -> None:
    scheduler = gang_cluster()
    urgent = job("urgent", priority=9, gpus=2, duration=300.0, owner="team", attempt=2)
    scheduler.submit(msgspec.structs.replace(urgent, nodes=2))
    placement = scheduler.place()
    assert placement.decisions == ()
    (plan,) = placement.preemptions
    assert plan.victim_ids == {"low-a", "low-b"}
    assert plan.hosts == (("a", (0, 1)), ("b", (0, 1)))
    scheduler.release("low-a")
    scheduler.submit(job("backfill", priority=1, gpus=1))
    assert scheduler.place().decisions == (), "the first freed host is held for the gang"
    assert scheduler.place().decisions == (), "and stays held, pass after pass"
    scheduler.release("low-b")
    decisions = scheduler.place().decisions
    (decision,) = [d for d in decisions if d.job_id == "urgent"]
    assert (decision.runner_id, decision.gpu_ids, decision.attempt) == ("a", (0, 1), 3)
    assert decision.gpu_uuids == ("GPU-a-0", "GPU-a-1")
    assert decision.peers == (
        RankPlacement(rank=1, runner_id="b", gpu_ids=(0, 1), gpu_uuids=("GPU-b-0", "GPU-b-1")),
    )
    assert scheduler.jobs_on("a") == ("urgent",) and scheduler.jobs_on("b") == ("urgent",)
    assert scheduler.gpus_in_use("team") == 4, "every rank's GPUs count for its owner"
    assert scheduler.running_job("urgent") == RunningJob(
        job_id="urgent",
        runner_id="a",
        gpu_ids=(0, 1),
        remaining_s=300.0,
        priority=9,
        owner="team",
        peers=decision.peers,
    )
    assert scheduler.queue_length == 1, "only the backfill job waits"
    scheduler.release("urgent")
    assert scheduler.jobs_on("a") == () and scheduler.jobs_on("b") == (), "every rank let go"


def test_a_multi_node_job_over_its_owners_quota_preempts_nobody() -> None:
    scheduler = gang_cluster()
    scheduler.set_quota("team", 3)
    gang = msgspec.structs.replace(job("urgent", priority=9, gpus=2, owner="team"), nodes=2)
    scheduler.submit(gang)
    assert scheduler.place().preemptions == (), "2 nodes x 2 GPUs is over a quota of 3"


def test_a_multi_node_plan_is_given_up_when_one_of_its_hosts_dies() -> None:
    scheduler = gang_cluster()
    scheduler.submit(msgspec.structs.replace(job("urgent", priority=9, gpus=2), nodes=2))
    assert scheduler.place().preemptions
    scheduler.release("low-a")
    scheduler.place()
    scheduler.update_host(host("b", 2, alive=False))
    scheduler.place()
    assert "urgent" not in scheduler.plans
    scheduler.remove("urgent")
    scheduler.submit(job("next", priority=1, gpus=2))
    (decision,) = scheduler.place().decisions
    assert (decision.job_id, decision.runner_id) == ("next", "a"), "host a's hold is gone"


def two_plans() -> PlacementCore:
    """Two urgent jobs, each with a plan under way on a host of its own."""
    scheduler = gang_cluster()
    scheduler.submit(job("urgent-1", priority=9, gpus=2))
    scheduler.submit(job("urgent-2", priority=8, gpus=2))
    plans = scheduler.place().preemptions
    assert {(plan.job_id, plan.runner_id) for plan in plans} == {
        ("urgent-1", "a"),
        ("urgent-2", "b"),
    }
    return scheduler


def test_a_plan_whose_victims_stopped_starts_while_an_earlier_one_still_waits() -> None:
    scheduler = two_plans()
    scheduler.release("low-b")
    (decision,) = scheduler.place().decisions
    assert (decision.job_id, decision.runner_id) == ("urgent-2", "b")
    assert "urgent-1" in scheduler.plans


def test_a_broken_plan_does_not_hold_up_the_next_one() -> None:
    scheduler = two_plans()
    scheduler.update_host(host("a", 2, alive=False))
    scheduler.release("low-b")
    (decision,) = scheduler.place().decisions
    assert (decision.job_id, decision.runner_id) == ("urgent-2", "b")
    assert "urgent-1" not in scheduler.plans


def test_a_two_node_job_with_one_free_host_preempts_on_one_other() -> None:
    scheduler = PlacementCore(ON)
    scheduler.update_host(host("a", 2))
    scheduler.update_host(host("b", 2))
    scheduler.assign(RunningJob(job_id="low-b", runner_id="b", gpu_ids=(0, 1), priority=2))
    scheduler.set_victim_facts({"low-b": facts("low-b", 2)})
    scheduler.submit(msgspec.structs.replace(job("urgent", priority=9, gpus=2), nodes=2))
    placement = scheduler.place()
    assert placement.decisions == (), "host a alone is not room for two nodes"
    (plan,) = placement.preemptions
    assert plan.hosts == (("a", (0, 1)), ("b", (0, 1)))
    assert plan.victim_ids == {"low-b"}
