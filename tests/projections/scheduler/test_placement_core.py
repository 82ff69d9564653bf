"""The placement core between passes: held GPUs, plans, hosts, and caches that must follow
every change (a stale cache would plan on an old layout)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from swift_trainer.projections.scheduler import PlacementCore, RunningJob
from swift_trainer.projections.scheduler.placement import PlacementPolicy, Unplaceable
from swift_trainer.projections.scheduler.preemption import PreemptionPolicy, VictimFacts

from .builders import A100_40, A100_40_MIB, H100, H100_MIB, gpu, host, job

ON = PlacementPolicy(preemption=PreemptionPolicy(enabled=True, min_runtime_s=600))
NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def facts(job_id: str, priority: int = 2, *, eligible: bool = True) -> VictimFacts:
    return VictimFacts(job_id=job_id, attempt=1, priority=priority, eligible=eligible)


def core(*running: tuple[str, int], gpus: int = 2) -> PlacementCore:
    """Host ``a`` with ``gpus`` GPUs; each (job, GPU) runs there at priority 2."""
    scheduler = PlacementCore(ON)
    scheduler.update_host(host("a", gpus))
    for job_id, index in running:
        scheduler.assign(RunningJob(job_id=job_id, runner_id="a", gpu_ids=(index,), priority=2))
    return scheduler


def victims(scheduler: PlacementCore) -> list[set[str]]:
    return [set(plan.victim_ids) for plan in scheduler.place().preemptions]


# --- plans and the GPUs held for them --------------------------------------------------------


def test_a_gpu_free_when_the_plan_is_made_is_held_for_the_preemptor() -> None:
    scheduler = core(("low", 1))
    scheduler.set_victim_facts({"low": facts("low")})
    scheduler.submit(job("urgent", priority=9, gpus=2))
    assert victims(scheduler) == [{"low"}], "the free GPU 0 counts: one victim"
    scheduler.submit(job("small", priority=1))
    assert scheduler.place().decisions == (), "GPU 0 is held for the preemptor"
    scheduler.release("low")
    (decision,) = scheduler.place().decisions
    assert (decision.job_id, decision.gpu_ids) == ("urgent", (0, 1))


def test_a_removed_preemptor_has_no_plan() -> None:
    scheduler = core(("low1", 0), ("low2", 1))
    scheduler.set_victim_facts({n: facts(n) for n in ("low1", "low2")})
    scheduler.submit(job("urgent", priority=9, gpus=2))
    assert victims(scheduler) == [{"low1", "low2"}]
    assert scheduler.remove("urgent") is not None
    assert scheduler.plans == {}


def test_a_restored_plan_is_kept_for_a_queued_preemptor_only() -> None:
    first = core(("low1", 0), ("low2", 1))
    first.set_victim_facts({n: facts(n) for n in ("low1", "low2")})
    first.submit(job("urgent", priority=9, gpus=2))
    (plan,) = first.place().preemptions

    restarted = core(("low1", 0), ("low2", 1))
    restarted.restore_plan(plan)
    assert restarted.plans == {}, "the preemptor is not queued here"
    restarted.submit(job("urgent", priority=9, gpus=2))
    restarted.restore_plan(plan)
    assert restarted.plans == {"urgent": plan}
    for victim in ("low1", "low2"):
        restarted.release(victim)
    (decision,) = restarted.place().decisions
    assert (decision.job_id, decision.gpu_ids) == ("urgent", plan.gpu_ids)


# --- the search sees each change ------------------------------------------------------------


def test_a_failed_search_is_answered_again_for_the_next_lane() -> None:
    """Two owners' urgent jobs (two lanes) search the same unchanged host in one pass."""
    scheduler = core(("low", 0), ("keep", 1))
    scheduler.set_victim_facts({"low": facts("low"), "keep": facts("keep", eligible=False)})
    scheduler.submit(job("ann", priority=9, gpus=2, owner="ann"))
    scheduler.submit(job("bob", priority=9, gpus=2, owner="bob"))
    placement = scheduler.place()
    assert (placement.decisions, placement.preemptions) == ((), ())
    assert [j.job_id for j in scheduler.queued_jobs()] == ["ann", "bob"]


def test_a_gpu_freed_since_the_last_search_is_counted() -> None:
    scheduler = core(("low", 0), ("keep", 1))
    scheduler.set_victim_facts({"low": facts("low"), "keep": facts("keep", eligible=False)})
    scheduler.submit(job("urgent", priority=9, gpus=2))
    assert victims(scheduler) == []
    scheduler.release("keep")
    scheduler.set_victim_facts({"low": facts("low")})
    assert victims(scheduler) == [{"low"}]


def test_a_job_that_became_eligible_is_a_victim_at_the_next_search() -> None:
    scheduler = core(("low", 0), ("young", 1))
    scheduler.set_victim_facts({"low": facts("low"), "young": facts("young", eligible=False)})
    scheduler.submit(job("urgent", priority=9, gpus=2))
    assert victims(scheduler) == []
    scheduler.set_victim_facts({"low": facts("low"), "young": facts("young")})
    assert victims(scheduler) == [{"low", "young"}]


def test_a_job_with_facts_for_the_first_time_is_a_victim_at_the_next_search() -> None:
    scheduler = core(("low", 0), ("new", 1))
    scheduler.set_victim_facts({"low": facts("low")})
    scheduler.submit(job("urgent", priority=9, gpus=2))
    assert victims(scheduler) == []
    scheduler.set_victim_facts({"low": facts("low"), "new": facts("new")})
    assert victims(scheduler) == [{"low", "new"}]


def test_a_job_that_lost_its_eligibility_is_no_victim_at_the_next_search() -> None:
    scheduler = core(("low", 0), ("other", 1), gpus=3)
    scheduler.set_victim_facts({"low": facts("low"), "other": facts("other", eligible=False)})
    scheduler.submit(job("urgent", priority=9, gpus=3))
    assert victims(scheduler) == []
    scheduler.set_victim_facts({"other": facts("other", eligible=False)})
    scheduler.submit(job("next", priority=9, gpus=2, owner="b"))
    assert victims(scheduler) == []


def test_a_job_that_needs_a_gpu_model_preempts_only_on_that_model() -> None:
    scheduler = PlacementCore(ON)
    mixed = (gpu(0, "a", name=A100_40, total=A100_40_MIB), gpu(1, "a", name=H100, total=H100_MIB))
    scheduler.update_host(host("a", gpus=mixed))
    scheduler.assign(RunningJob(job_id="on-a100", runner_id="a", gpu_ids=(0,), priority=1))
    scheduler.assign(RunningJob(job_id="on-h100", runner_id="a", gpu_ids=(1,), priority=2))
    scheduler.set_victim_facts({"on-a100": facts("on-a100", 1), "on-h100": facts("on-h100")})
    scheduler.submit(job("big", priority=9, min_gb=60))
    (plan,) = scheduler.place().preemptions
    assert (plan.victim_ids, plan.gpu_ids) == ({"on-h100"}, (1,))


# --- hosts and queue --------------------------------------------------------------------------


def test_a_removed_host_takes_no_jobs_and_an_unknown_one_is_ignored() -> None:
    scheduler = core()
    scheduler.remove_host("a")
    scheduler.remove_host("never-seen")
    assert scheduler.host("a") is None
    scheduler.submit(job("j"))
    assert scheduler.place().decisions == ()


def test_an_expired_lease_marks_the_host_not_alive() -> None:
    scheduler = PlacementCore()
    scheduler.update_host(host("a", 1, lease_expires_at=NOW))
    assert scheduler.expire_leases(NOW + timedelta(seconds=1)) == ("a",)
    expired = scheduler.host("a")
    assert expired is not None and expired.alive is False


def test_a_queued_job_is_found_by_its_id() -> None:
    scheduler = core()
    queued = job("j", gpus=3)
    scheduler.submit(queued)
    assert scheduler.queued_job("j") == queued
    assert scheduler.queued_job("other") is None


def test_a_job_bigger_than_every_host_is_unplaceable_with_the_reason() -> None:
    scheduler = core()
    scheduler.submit(job("huge", gpus=4))
    assert scheduler.unplaceable() == (
        Unplaceable(
            job_id="huge",
            reason="needs 4 GPUs on one runner, but the largest live runner has 2; "
            "the job waits until a runner that big reports",
        ),
    )
