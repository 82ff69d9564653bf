"""Placement rules, one at a time, through ``place_jobs`` and the incremental ``PlacementCore``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.gang import RankPlacement
from swift_trainer.core.job import JobStatus, decide, evolve, initial_state
from swift_trainer.core.spec import JobSpec
from swift_trainer.projections.scheduler import (
    Decision,
    HostSnapshot,
    PlacementCore,
    PlacementPolicy,
    QueuedJob,
    Reservation,
    RunningJob,
    place_jobs,
)
from swift_trainer.projections.scheduler.placement import Unplaceable
from swift_trainer.projections.scheduler.preemption import PreemptionPolicy, VictimFacts

from .builders import A100_40, A100_40_MIB, H100, H100_MIB, gpu, host, job, running

NOW = datetime(2026, 1, 1, tzinfo=UTC)
STRICT = PlacementPolicy(backfill=False)


def placed(
    queued: list[QueuedJob],
    hosts: list[HostSnapshot],
    running_jobs: list[RunningJob] = (),  # type: ignore[assignment]
    policy: PlacementPolicy | None = None,
) -> dict[str, tuple[str, tuple[int, ...]]]:
    result = place_jobs(queued, hosts, running_jobs, policy)
    return {d.job_id: (d.runner_id, d.gpu_ids) for d in result.decisions}


# --- order ----------------------------------------------------------------------------------


def test_the_higher_priority_job_gets_the_only_gpu() -> None:
    queued = [job("low", priority=2, seq=1), job("high", priority=8, seq=2)]
    assert placed(queued, [host("a", 1)]) == {"high": ("a", (0,))}


def test_equal_priority_is_first_come_first_served() -> None:
    queued = [job("young", seq=9), job("old", seq=3)]
    assert placed(queued, [host("a", 1)]) == {"old": ("a", (0,))}


def test_a_priority_change_moves_a_job_ahead() -> None:
    scheduler = PlacementCore()
    scheduler.update_host(host("a", 1))
    scheduler.submit(job("first", priority=5, seq=1))
    scheduler.submit(job("second", priority=5, seq=2))
    assert scheduler.change_priority("second", 6)
    assert [d.job_id for d in scheduler.place().decisions] == ["second"]


def test_decisions_come_in_queue_order() -> None:
    queued = [job(f"j{i}", priority=i, seq=i) for i in range(4)]
    result = place_jobs(queued, [host("a", 8)])
    assert [d.job_id for d in result.decisions] == ["j3", "j2", "j1", "j0"]


# --- eligibility ----------------------------------------------------------------------------


def test_min_gpu_memory_picks_the_big_cards() -> None:
    small = host("a-small", gpus=(gpu(0, "a-small", name=A100_40, total=A100_40_MIB),))
    big = host("b-big", 1)
    queued = [job("needs-80", min_gb=80, seq=1), job("any", seq=2)]
    assert placed(queued, [small, big]) == {"needs-80": ("b-big", (0,)), "any": ("a-small", (0,))}


def test_gpu_name_is_matched_case_insensitively() -> None:
    a100 = host("a", gpus=(gpu(0, "a", name=A100_40, total=A100_40_MIB),))
    h100 = host("b", 1)
    assert placed([job("j", gpu_name="a100-SXM4")], [a100, h100]) == {"j": ("a", (0,))}
    assert placed([job("k", gpu_name="h100")], [a100, h100]) == {"k": ("b", (0,))}


def test_a_gpu_used_by_hand_counts_as_busy() -> None:
    busy = host("a", gpus=(gpu(0, foreign=20_000),))
    quiet = host("b", gpus=(gpu(0, "b", foreign=300),))  # e.g. a display server
    assert placed([job("j", seq=1), job("k", seq=2)], [busy, quiet]) == {"j": ("b", (0,))}


def test_the_foreign_memory_threshold_is_a_setting() -> None:
    hosts = [host("a", gpus=(gpu(0, foreign=300),))]
    lenient = PlacementPolicy(foreign_memory_threshold_mib=2048)
    strict = PlacementPolicy(foreign_memory_threshold_mib=256)
    assert placed([job("j")], hosts, policy=lenient) == {"j": ("a", (0,))}
    assert placed([job("j")], hosts, policy=strict) == {}


def test_dead_runners_get_no_work() -> None:
    assert placed([job("j")], [host("a", 2, alive=False)]) == {}


def test_runners_past_their_lease_get_no_work() -> None:
    hosts = [
        host("a", 1, lease_expires_at=NOW - timedelta(seconds=1)),
        host("b", 1, lease_expires_at=NOW + timedelta(seconds=10)),
    ]
    result = place_jobs([job("j", seq=1), job("k", seq=2)], hosts, now=NOW)
    assert [(d.job_id, d.runner_id) for d in result.decisions] == [("j", "b")]


def test_expire_leases_marks_runners_dead_and_names_their_jobs() -> None:
    scheduler = PlacementCore()
    scheduler.update_host(host("a", 2, lease_expires_at=NOW + timedelta(seconds=5)))
    scheduler.update_host(host("b", 2, lease_expires_at=NOW + timedelta(seconds=50)))
    scheduler.assign(running("r", "a", (0,)))
    assert scheduler.expire_leases(NOW) == ()
    assert scheduler.expire_leases(NOW + timedelta(seconds=5)) == ("a",)
    assert scheduler.expire_leases(NOW + timedelta(seconds=6)) == ()  # already dead
    assert scheduler.jobs_on("a") == ("r",)
    scheduler.submit(job("j"))
    assert [d.runner_id for d in scheduler.place().decisions] == ["b"]


def test_unhealthy_gpus_are_skipped() -> None:
    hosts = [host("a", gpus=(gpu(0, healthy=False), gpu(1)))]
    assert placed([job("j", seq=1), job("k", seq=2)], hosts) == {"j": ("a", (1,))}


def test_gpus_of_running_jobs_are_not_handed_out_twice() -> None:
    hosts = [host("a", 4)]
    result = placed([job("j", gpus=2)], hosts, [running("r", "a", (0, 2))])
    assert result == {"j": ("a", (1, 3))}


# --- gangs ----------------------------------------------------------------------------------


def test_a_gang_never_spans_hosts() -> None:
    hosts = [host("a", 2), host("b", 2)]
    busy = [running("ra", "a", (0,), 10), running("rb", "b", (1,), 20)]
    result = place_jobs([job("pair", gpus=2)], hosts, busy)
    assert result.decisions == ()
    assert result.reservations == (
        Reservation(job_id="pair", runner_id="a", gpu_ids=(0, 1), expected_start_s=10.0),
    )


def test_a_gang_gets_all_its_gpus_at_once() -> None:
    result = placed([job("quad", gpus=4)], [host("a", 8)])
    assert result == {"quad": ("a", (0, 1, 2, 3))}


# --- choice ---------------------------------------------------------------------------------


def test_the_tightest_host_is_chosen() -> None:
    hosts = [host("a", 8), host("b", 3), host("c", 2), host("d", 1)]
    assert placed([job("pair", gpus=2)], hosts) == {"pair": ("c", (0, 1))}


def test_tight_fit_counts_free_gpus_not_host_size() -> None:
    hosts = [host("a", 8), host("b", 4)]
    busy = [running("r", "a", (0, 1, 2, 3, 4, 5))]
    assert placed([job("pair", gpus=2)], hosts, busy) == {"pair": ("a", (6, 7))}


def test_tight_fit_ties_go_to_the_lowest_runner_id() -> None:
    hosts = [host("c", 2), host("b", 2), host("z", 2)]
    assert placed([job("j")], hosts) == {"j": ("b", (0,))}


def test_tight_fit_for_constrained_jobs_counts_matching_gpus() -> None:
    mixed = host(
        "a",
        gpus=(gpu(0, "a", name=A100_40, total=A100_40_MIB), gpu(1, "a"), gpu(2, "a")),
    )
    lone = host("b", gpus=(gpu(0, "b"), gpu(1, "b", name=A100_40, total=A100_40_MIB)))
    assert placed([job("j", gpu_name="H100")], [mixed, lone]) == {"j": ("b", (0,))}


def test_within_a_host_the_least_loaded_gpus_are_chosen() -> None:
    gpus = (gpu(0, used=8000), gpu(1, used=10, util=40), gpu(2, used=10, util=3), gpu(3))
    assert placed([job("j", gpus=2)], [host("a", gpus=gpus)]) == {"j": ("a", (2, 3))}


def test_within_a_host_a_gang_stays_on_one_switch() -> None:
    gpus = tuple(gpu(i, pcie=f"s{i % 2}", used=i) for i in range(4))
    assert placed([job("j", gpus=2)], [host("a", gpus=gpus)]) == {"j": ("a", (0, 2))}


def test_decisions_carry_the_next_attempt_and_the_uuids() -> None:
    result = place_jobs([job("j", gpus=2, attempt=3)], [host("a", 2)])
    assert result.decisions == (
        Decision(
            job_id="j",
            attempt=4,
            runner_id="a",
            gpu_ids=(0, 1),
            gpu_uuids=("GPU-a-0", "GPU-a-1"),
        ),
    )


def test_a_decision_is_a_schedule_command_the_job_accepts() -> None:
    state = initial_state("j")
    spec = JobSpec(data_path="d", model_path="m", output_dir="out/j", gpu_count=2)
    for event in decide(state, c.SubmitJob(job_id="j", spec=spec), NOW):
        state = evolve(state, event)
    queued = job("j", gpus=2, attempt=state.attempt)
    (decision,) = place_jobs([queued], [host("a", 2)]).decisions
    (scheduled,) = decide(state, decision.to_command(), NOW)
    assert isinstance(scheduled, e.JobScheduled)
    assert evolve(state, scheduled).status is JobStatus.SCHEDULED


# --- reservation, backfill, strict FIFO ----------------------------------------------------


def backfill_cluster() -> tuple[list[HostSnapshot], list[RunningJob], list[QueuedJob]]:
    """Head needs a whole host: ``a`` frees in 100 s, ``b`` at an unknown time."""
    hosts = [host("a", 8), host("b", 8)]
    busy = [running("ra", "a", (0, 1), 100), running("rb", "b", (0, 1, 2, 3))]
    queued = [job("head", priority=9, gpus=8, seq=1)]
    queued += [job(f"small{i}", priority=1, seq=10 + i) for i in range(10)]
    return hosts, busy, queued


def test_the_blocked_head_reserves_where_it_fits_first_and_others_backfill() -> None:
    hosts, busy, queued = backfill_cluster()
    result = place_jobs(queued, hosts, busy)
    assert result.reservations == (
        Reservation(job_id="head", runner_id="a", gpu_ids=tuple(range(8)), expected_start_s=100.0),
    )
    # Only b's four free GPUs are backfilled; a's six free GPUs wait for the head.
    assert [(d.job_id, d.runner_id) for d in result.decisions] == [
        (f"small{i}", "b") for i in range(4)
    ]


def test_strict_fifo_starts_nothing_behind_a_blocked_head() -> None:
    hosts, busy, queued = backfill_cluster()
    result = place_jobs(queued, hosts, busy, STRICT)
    assert result.decisions == ()
    assert [r.job_id for r in result.reservations] == ["head"]


def test_strict_fifo_still_places_everything_ahead_of_the_block() -> None:
    hosts = [host("a", 2)]
    queued = [job("one", seq=1), job("three", gpus=3, seq=2), job("other", seq=3)]
    result = place_jobs(queued, hosts, policy=STRICT)
    assert [d.job_id for d in result.decisions] == ["one", "other"]  # "three" never fits
    queued = [job("one", seq=1), job("two", gpus=2, seq=2), job("other", seq=3)]
    result = place_jobs(queued, hosts, policy=STRICT)
    assert [d.job_id for d in result.decisions] == ["one"]
    assert [r.job_id for r in result.reservations] == ["two"]


def test_the_reservation_goes_to_the_earliest_host() -> None:
    hosts = [host("a", 4), host("b", 4)]
    busy = [running("ra", "a", (0, 1, 2, 3), 500), running("rb", "b", (0, 1), 50)]
    result = place_jobs([job("quad", gpus=4)], hosts, busy)
    assert result.reservations == (
        Reservation(job_id="quad", runner_id="b", gpu_ids=(0, 1, 2, 3), expected_start_s=50.0),
    )


def test_with_unknown_ends_the_reservation_is_still_deterministic() -> None:
    hosts = [host("b", 2), host("a", 2)]
    busy = [running("ra", "a", (0,)), running("rb", "b", (0,))]
    result = place_jobs([job("pair", gpus=2)], hosts, busy)
    assert result.reservations == (
        Reservation(job_id="pair", runner_id="a", gpu_ids=(0, 1), expected_start_s=None),
    )


def test_a_reservation_prefers_free_gpus_among_equally_early_hosts() -> None:
    hosts = [host("a", 4), host("b", 4)]
    busy = [running("ra", "a", (0, 1, 2), 100), running("rb", "b", (0,), 100)]
    result = place_jobs([job("quad", gpus=4)], hosts, [*busy, running("rb2", "b", (1,))])
    assert [r.runner_id for r in result.reservations] == ["a"]
    result = place_jobs([job("quad", gpus=4)], hosts, busy)
    assert [r.runner_id for r in result.reservations] == ["b"]


def test_only_the_head_reserves() -> None:
    hosts = [host("a", 4), host("b", 4)]
    busy = [running("ra", "a", (0, 1), 10), running("rb", "b", (0, 1, 2), 20)]
    queued = [job("head", gpus=4, seq=1), job("next", gpus=3, seq=2), job("one", seq=3)]
    result = place_jobs(queued, hosts, busy)
    assert [r.job_id for r in result.reservations] == ["head"]
    assert [(d.job_id, d.runner_id) for d in result.decisions] == [("one", "b")]


def test_a_constrained_head_reserves_matching_gpus_only() -> None:
    mixed = host(
        "a",
        gpus=(
            gpu(0, "a", name=A100_40, total=A100_40_MIB),
            gpu(1, "a"),
            gpu(2, "a"),
            gpu(3, "a", name=A100_40, total=A100_40_MIB),
        ),
    )
    busy = [running("r", "a", (1,), 30)]
    queued = [job("h100-pair", gpus=2, gpu_name="h100", seq=1), job("any", seq=2)]
    result = place_jobs(queued, [mixed], busy)
    assert result.reservations == (
        Reservation(job_id="h100-pair", runner_id="a", gpu_ids=(1, 2), expected_start_s=30.0),
    )
    # The A100s are not reserved, so the next job may use one.
    assert [(d.job_id, d.gpu_ids) for d in result.decisions] == [("any", (0,))]


def test_reservations_last_one_pass() -> None:
    scheduler = PlacementCore()
    for hs in (host("a", 2), host("b", 1)):
        scheduler.update_host(hs)
    scheduler.assign(running("ra", "a", (0,), 10))
    scheduler.submit(job("pair", gpus=2, seq=1))
    scheduler.submit(job("one", seq=2))
    first = scheduler.place()
    assert first.reservation is not None
    assert (first.reservation.runner_id, first.reservation.gpu_ids) == ("a", (0, 1))
    assert [(d.job_id, d.runner_id) for d in first.decisions] == [("one", "b")]
    scheduler.release("ra")
    second = scheduler.place()
    assert second.reservation is None
    assert [(d.job_id, d.gpu_ids) for d in second.decisions] == [("pair", (0, 1))]


# --- unplaceable ----------------------------------------------------------------------------


def test_a_job_too_big_for_any_host_is_reported_and_skipped() -> None:
    queued = [job("huge", priority=10, gpus=16, seq=1), job("small", priority=0, seq=2)]
    result = place_jobs(queued, [host("a", 8), host("b", 4)])
    assert [d.job_id for d in result.decisions] == ["small"]
    assert result.reservations == ()
    (stuck,) = result.unplaceable
    assert stuck.job_id == "huge"
    assert stuck.reason.startswith("needs 16 GPUs on one runner, but the largest live runner has 8")
    assert [(q.job_id, q.position, q.unplaceable) for q in result.queue] == [
        ("huge", 1, stuck.reason),
    ]


def test_a_job_no_gpu_matches_is_reported_and_skipped() -> None:
    queued = [job("v100", priority=9, gpu_name="V100", seq=1), job("any", seq=2)]
    result = place_jobs(queued, [host("a", 1)], [running("r", "a", (0,))])
    assert result.reservations == (
        Reservation(job_id="any", runner_id="a", gpu_ids=(0,), expected_start_s=None),
    )
    assert [(u.job_id, u.reason) for u in result.unplaceable] == [
        ("v100", "no live runner has a healthy GPU named like 'v100'"),
    ]


def test_unhealthy_gpus_do_not_count_as_capacity_but_busy_ones_do() -> None:
    hosts = [host("a", gpus=(gpu(0), gpu(1, healthy=False)))]
    result = place_jobs([job("pair", gpus=2)], hosts)
    assert [u.job_id for u in result.unplaceable] == ["pair"]
    hosts = [host("a", gpus=(gpu(0), gpu(1, foreign=50_000)))]
    result = place_jobs([job("pair", gpus=2)], hosts)
    assert result.unplaceable == ()
    assert [(r.job_id, r.expected_start_s) for r in result.reservations] == [("pair", None)]


def test_an_unplaceable_job_starts_once_a_big_enough_runner_reports() -> None:
    scheduler = PlacementCore()
    scheduler.update_host(host("a", 4))
    scheduler.submit(job("eight", gpus=8))
    assert scheduler.place().decisions == ()
    assert [u.job_id for u in scheduler.unplaceable()] == ["eight"]
    scheduler.update_host(host("b", 8))
    assert [(d.job_id, d.runner_id) for d in scheduler.place().decisions] == [("eight", "b")]
    assert scheduler.unplaceable() == ()


# --- the incremental scheduler --------------------------------------------------------------


def test_a_decision_is_applied_at_once() -> None:
    scheduler = PlacementCore()
    scheduler.update_host(host("a", 1))
    scheduler.submit(job("j", seq=1, duration=60))
    scheduler.submit(job("k", seq=2))
    assert [d.job_id for d in scheduler.place().decisions] == ["j"]
    assert scheduler.queued_job("j") is None
    assert scheduler.running_job("j") == RunningJob(
        job_id="j", runner_id="a", gpu_ids=(0,), remaining_s=60, priority=5
    )
    assert scheduler.place().decisions == ()  # the GPU is j's until released
    scheduler.release("j")
    assert [d.job_id for d in scheduler.place().decisions] == ["k"]


def test_a_refused_decision_can_be_undone() -> None:
    scheduler = PlacementCore()
    scheduler.update_host(host("a", 1))
    queued = job("j")
    scheduler.submit(queued)
    (decision,) = scheduler.place().decisions
    scheduler.submit(queued)  # the command was refused: the job is queued again
    assert scheduler.running_job("j") is None
    assert scheduler.position("j") == 1
    assert scheduler.place().decisions == (decision,)


def test_assigning_a_queued_job_takes_it_out_of_the_queue() -> None:
    scheduler = PlacementCore()
    scheduler.update_host(host("a", 2))
    scheduler.submit(job("j"))
    scheduler.assign(running("j", "a", (1,), 30))
    assert scheduler.queue_length == 0
    assert scheduler.jobs_on("a") == ("j",)
    scheduler.assign(running("j", "a", (0,), 30))  # a corrected report moves it
    scheduler.submit(job("k"))
    assert [d.gpu_ids for d in scheduler.place().decisions] == [(1,)]


def test_a_runner_going_away_and_coming_back() -> None:
    scheduler = PlacementCore()
    scheduler.update_host(host("a", 1))
    scheduler.update_host(host("a", 1, alive=False))
    scheduler.submit(job("j"))
    assert scheduler.place().decisions == ()
    assert [u.job_id for u in scheduler.unplaceable()] == ["j"]
    scheduler.update_host(host("a", 1))
    assert [d.job_id for d in scheduler.place().decisions] == ["j"]
    scheduler.remove_host("a")
    assert scheduler.host("a") is None


def test_remaining_time_updates_move_the_reservation() -> None:
    scheduler = PlacementCore()
    for name in ("a", "b"):
        scheduler.update_host(host(name, 1))
    scheduler.assign(running("ra", "a", (0,), 100))
    scheduler.assign(running("rb", "b", (0,), 200))
    scheduler.submit(job("j"))
    reservation = scheduler.place().reservation
    assert reservation is not None
    assert (reservation.runner_id, reservation.expected_start_s) == ("a", 100.0)
    scheduler.set_remaining("ra", None)
    reservation = scheduler.place().reservation
    assert reservation is not None
    assert (reservation.runner_id, reservation.expected_start_s) == ("b", 200.0)
    running_ra = scheduler.running_job("ra")
    assert running_ra is not None
    assert running_ra.remaining_s is None


def test_a_job_avoids_the_gpus_that_failed_it() -> None:
    hosts = [host("a", 2)]
    faulty = hosts[0].gpus[0].uuid
    avoiding = msgspec.structs.replace(job("j", seq=1), excluded_gpus=(faulty,))
    assert placed([avoiding], hosts) == {"j": ("a", (1,))}
    # Other jobs still get the card: the exclusion is the job's own.
    assert placed([job("k", seq=2)], [host("a", 1)]) == {"k": ("a", (0,))}


def test_a_job_whose_only_matching_gpu_is_excluded_waits() -> None:
    hosts = [host("a", 1)]
    avoiding = msgspec.structs.replace(job("j", seq=1), excluded_gpus=(hosts[0].gpus[0].uuid,))
    result = place_jobs([avoiding], hosts, [])
    assert result.decisions == ()


# --- the core between passes: held GPUs, plans, hosts, caches that follow every change -------


ON = PlacementPolicy(preemption=PreemptionPolicy(enabled=True, min_runtime_s=600))


def facts(job_id: str, priority: int = 2, *, eligible: bool = True) -> VictimFacts:
    return VictimFacts(job_id=job_id, attempt=1, priority=priority, eligible=eligible)


def core(*holding: tuple[str, int], gpus: int = 2) -> PlacementCore:
    """Host ``a`` with ``gpus`` GPUs; each (job, GPU) runs there at priority 2."""
    scheduler = PlacementCore(ON)
    scheduler.update_host(host("a", gpus))
    for job_id, index in holding:
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


def test_a_running_jobs_remaining_time_is_kept_with_it() -> None:
    scheduler = core(("low", 0))
    scheduler.set_remaining("low", 50.0)
    held = scheduler.running_job("low")
    assert held is not None and held.remaining_s == 50.0
    scheduler.set_remaining("never-assigned", 10.0)
    assert scheduler.running_job("never-assigned") is None


def test_a_preemptor_starts_as_its_next_attempt_and_holds_its_gpus() -> None:
    scheduler = core(("low1", 0), ("low2", 1))
    scheduler.set_victim_facts({n: facts(n) for n in ("low1", "low2")})
    urgent = job("urgent", priority=9, gpus=2, owner="ann", attempt=1, duration=300.0)
    scheduler.submit(urgent)
    assert victims(scheduler) == [{"low1", "low2"}]
    for name in ("low1", "low2"):
        scheduler.release(name)
    (decision,) = scheduler.place().decisions
    assert decision == Decision(
        job_id="urgent",
        attempt=2,
        runner_id="a",
        gpu_ids=(0, 1),
        gpu_uuids=("GPU-a-0", "GPU-a-1"),
    )
    assert scheduler.running_job("urgent") == RunningJob(
        job_id="urgent", runner_id="a", gpu_ids=(0, 1), remaining_s=300.0, priority=9, owner="ann"
    )
    assert scheduler.gpus_in_use("ann") == 2
    assert scheduler.queued_jobs() == []


def test_each_plan_of_a_pass_has_victims_of_its_own() -> None:
    """Three preemptors, six victims: the cheapest victims go to one plan only."""
    scheduler = core(*((f"low{i}", i) for i in range(6)), gpus=6)
    scheduler.set_victim_facts({f"low{i}": facts(f"low{i}") for i in range(6)})
    for owner in ("ann", "bob", "cid"):
        scheduler.submit(job(owner, priority=9, gpus=2, owner=owner))
    found = victims(scheduler)
    assert len(found) == 3
    assert set().union(*found) == {f"low{i}" for i in range(6)}


def test_a_lane_is_walked_past_a_job_with_a_plan() -> None:
    scheduler = core(*((f"low{i}", i) for i in range(6)), gpus=6)
    scheduler.set_victim_facts({f"low{i}": facts(f"low{i}") for i in range(6)})
    scheduler.submit(job("first", priority=9, gpus=2, seq=1))
    scheduler.submit(job("second", priority=9, gpus=2, seq=2))
    assert len(victims(scheduler)) == 2, "one lane: the second is searched after the first"
    scheduler.submit(job("third", priority=9, gpus=2, seq=3))
    assert len(victims(scheduler)) == 1, "the third is reached past the two with plans"
    assert set(scheduler.plans) == {"first", "second", "third"}


def test_no_plan_for_a_job_no_higher_than_every_victim_or_with_no_victim_at_all() -> None:
    scheduler = core(("low1", 0), ("low2", 1))
    scheduler.set_victim_facts({n: facts(n) for n in ("low1", "low2")})
    scheduler.submit(job("equal", priority=2, gpus=2))
    assert scheduler.place().preemptions == ()
    scheduler.set_victim_facts({n: facts(n, eligible=False) for n in ("low1", "low2")})
    scheduler.submit(job("urgent", priority=9, gpus=2))
    assert scheduler.place().preemptions == ()


def test_a_host_a_job_waits_on_is_left_to_it_in_that_pass() -> None:
    scheduler = core(("x", 0), ("soon", 1), ("y", 2), gpus=3)
    scheduler.set_victim_facts(
        {
            "x": facts("x", 1),
            "y": facts("y", 1),
            "soon": VictimFacts(job_id="soon", attempt=1, priority=1, eligible=False, soon=True),
        }
    )
    scheduler.submit(job("waits", priority=9, gpus=1, owner="ann"))
    scheduler.submit(job("later", priority=8, gpus=2, owner="bob"))
    assert scheduler.place().preemptions == (), "host a's GPUs are waited for"


def test_a_job_ending_in_under_a_second_is_expected_then() -> None:
    scheduler = PlacementCore()
    scheduler.update_host(host("a", 1))
    scheduler.assign(running("ra", "a", (0,), 0.5))
    scheduler.submit(job("j"))
    reservation = scheduler.place().reservation
    assert reservation is not None and reservation.expected_start_s == 0.5


def test_a_placed_or_assigned_job_counts_every_rank_for_its_owner() -> None:
    scheduler = PlacementCore()
    for name in ("a", "b"):
        scheduler.update_host(host(name, 2))
    gang = RunningJob(
        job_id="g",
        runner_id="a",
        gpu_ids=(0, 1),
        owner="ann",
        peers=(RankPlacement(rank=1, runner_id="b", gpu_ids=(0, 1)),),
    )
    scheduler.assign(gang)
    assert scheduler.gpus_in_use("ann") == 4
    scheduler.release("g")
    scheduler.submit(job("mine", owner="bob"))
    scheduler.place()
    placed = scheduler.running_job("mine")
    assert placed is not None and placed.owner == "bob"


def test_a_running_job_submitted_again_lets_its_gpus_go() -> None:
    scheduler = PlacementCore()
    scheduler.update_host(host("a", 1))
    scheduler.assign(running("r", "a", (0,), owner="ann"))
    scheduler.submit_many([job("r", owner="ann")])
    assert scheduler.gpus_in_use("ann") == 0
    assert [d.job_id for d in scheduler.place().decisions] == ["r"]


def test_a_started_preemptor_is_counted_until_released_and_expected_to_end() -> None:
    scheduler = core(("low1", 0), ("low2", 1))
    scheduler.set_victim_facts({n: facts(n) for n in ("low1", "low2")})
    scheduler.submit(job("urgent", priority=9, gpus=2, owner="ann", duration=300.0))
    scheduler.place()
    for name in ("low1", "low2"):
        scheduler.release(name)
    assert [d.job_id for d in scheduler.place().decisions] == ["urgent"]
    scheduler.submit(job("next", priority=1, gpus=2))
    reservation = scheduler.place().reservation
    assert reservation is not None and reservation.expected_start_s == 300.0
    scheduler.release("urgent")
    assert scheduler.gpus_in_use("ann") == 0


def test_a_victim_whose_priority_dropped_is_counted_at_the_next_search() -> None:
    scheduler = core(("low", 0), ("busy", 1))
    scheduler.set_victim_facts({"low": facts("low"), "busy": facts("busy", 9)})
    scheduler.submit(job("urgent", priority=9, gpus=2))
    assert victims(scheduler) == [], "busy has the preemptor's priority"
    scheduler.set_victim_facts({"low": facts("low"), "busy": facts("busy", 2)})
    assert victims(scheduler) == [{"low", "busy"}]
