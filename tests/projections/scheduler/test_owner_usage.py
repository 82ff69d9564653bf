"""Owners' GPU quotas and fair share: the counting itself, then the rule in placement passes.

The rule (``placement``, items 1 and 5): among jobs of equal priority the owner with fewer
GPUs in use goes first, counted at each decision; a job that would take its owner past
``max_gpus`` waits without blocking or reserving. The brute-force model in
``test_model`` checks the rule over random histories; these are its edge cases.
"""

from __future__ import annotations

import pytest

from swift_trainer.projections.scheduler import (
    OWNER_GPU_QUOTA,
    OwnerUsage,
    PlacementCore,
    PlacementPolicy,
    QueuedJob,
    RunningJob,
    place_jobs,
)

from .builders import host, job, running

STRICT = PlacementPolicy(backfill=False)


def placed_ids(
    queued: list[QueuedJob],
    gpus: int,
    held: list[RunningJob] = (),  # type: ignore[assignment]
    quotas: dict[str, int] | None = None,
    policy: PlacementPolicy | None = None,
) -> list[str]:
    result = place_jobs(queued, [host("a", gpus)], held, policy, max_gpus=quotas)
    return [d.job_id for d in result.decisions]


# --- counting -------------------------------------------------------------------------------


def test_usage_follows_holds_and_releases_per_owner() -> None:
    usage = OwnerUsage()
    usage.hold("j1", "ann", 2)
    usage.hold("j2", "ann", 1)
    usage.hold("j3", None, 4)
    assert (usage.in_use("ann"), usage.in_use(None), usage.in_use("bob")) == (3, 4, 0)
    usage.hold("j1", "ann", 1)  # held again: replaces, never adds twice
    assert usage.in_use("ann") == 2
    usage.release("j1")
    usage.release("j1")
    usage.release("unknown")
    assert usage.in_use("ann") == 1


@pytest.mark.parametrize(
    ("limit", "in_use", "gpus", "over", "never"),
    [
        (None, 9, 9, False, False),  # no quota
        (2, 0, 2, False, False),  # exactly at the limit is allowed
        (2, 1, 2, True, False),
        (2, 2, 1, True, False),
        (2, 0, 3, True, True),  # bigger than the whole quota
        (0, 0, 1, True, True),  # max_gpus 0: nothing starts
    ],
)
def test_over_quota_counts_the_gpus_in_use_plus_the_job(
    limit: int | None, in_use: int, gpus: int, over: bool, never: bool
) -> None:
    usage = OwnerUsage()
    usage.set_quota("ann", limit)
    if in_use:
        usage.hold("held", "ann", in_use)
    assert usage.over_quota("ann", gpus) is over
    assert usage.never_within_quota("ann", gpus) is never
    assert (usage.quota_reason("ann", gpus) is not None) is over


def test_jobs_without_owner_have_no_quota() -> None:
    usage = OwnerUsage()
    usage.set_quota("ann", 0)
    usage.hold("j", None, 100)
    assert not usage.over_quota(None, 100)
    assert usage.quota_reason(None, 100) is None


def test_the_reason_names_the_limit_and_the_gpus_in_use() -> None:
    usage = OwnerUsage()
    usage.set_quota("ann", 2)
    usage.hold("j", "ann", 2)
    assert usage.quota_reason("ann", 1) == (
        "owner 'ann' has 2 of its max_gpus 2 GPUs in use; it starts when enough of them are freed"
    )
    assert "more than owner 'ann''s max_gpus of 2" in (usage.quota_reason("ann", 3) or "")


def test_a_clone_is_independent() -> None:
    usage = OwnerUsage()
    usage.set_quota("ann", 1)
    usage.hold("j", "ann", 1)
    copy = usage.clone()
    copy.release("j")
    copy.set_quota("ann", None)
    assert usage.in_use("ann") == 1
    assert usage.over_quota("ann", 1)
    assert not copy.over_quota("ann", 5)


# --- quotas in a pass -----------------------------------------------------------------------


def test_an_owner_at_its_limit_waits_without_blocking_others() -> None:
    queued = [
        job("ann-1", seq=1, owner="ann"),
        job("ann-2", seq=2, owner="ann"),
        job("bob-1", seq=3, owner="bob"),
    ]
    assert placed_ids(queued, gpus=3, quotas={"ann": 1}) == ["ann-1", "bob-1"]


def test_gpus_already_held_count_towards_the_quota() -> None:
    held = [running("ann-0", "a", (0, 1), owner="ann")]
    queued = [job("ann-1", seq=1, owner="ann"), job("bob-1", seq=2, owner="bob")]
    assert placed_ids(queued, 4, held, quotas={"ann": 2}) == ["bob-1"]
    assert placed_ids(queued, 4, held, quotas={"ann": 3}) == ["bob-1", "ann-1"]  # fair share


def test_a_smaller_job_of_the_same_owner_may_still_fit_its_quota() -> None:
    queued = [
        job("ann-big", seq=1, gpus=2, owner="ann"),
        job("ann-small", seq=2, owner="ann"),
    ]
    held = [running("ann-0", "a", (0,), owner="ann")]
    assert placed_ids(queued, 8, held, quotas={"ann": 2}) == ["ann-small"]


def test_an_owner_over_its_quota_never_reserves() -> None:
    """The head of the queue is the first job its owner's quota allows: only it reserves."""
    held = [running("ann-0", "a", (0,), 10.0, owner="ann"), running("x", "a", (1,), 5.0)]
    queued = [job("ann-1", seq=1, gpus=2, owner="ann"), job("bob-1", seq=2, gpus=2, owner="bob")]
    result = place_jobs(queued, [host("a", 2)], held, max_gpus={"ann": 2})
    assert result.decisions == ()
    assert [r.job_id for r in result.reservations] == ["bob-1"]


def test_strict_fifo_does_not_stop_at_a_job_its_quota_holds() -> None:
    queued = [job("ann-1", seq=1, owner="ann"), job("bob-1", seq=2, owner="bob")]
    assert placed_ids(queued, 2, quotas={"ann": 0}, policy=STRICT) == ["bob-1"]


def test_a_quota_change_takes_effect_on_the_next_pass() -> None:
    scheduler = PlacementCore()
    scheduler.update_host(host("a", 4))
    scheduler.set_quota("ann", 1)
    scheduler.submit_many([job(f"ann-{n}", seq=n, owner="ann") for n in range(3)])
    assert [d.job_id for d in scheduler.place().decisions] == ["ann-0"]
    assert [d.job_id for d in scheduler.place().decisions] == []
    scheduler.set_quota("ann", 2)
    assert [d.job_id for d in scheduler.place().decisions] == ["ann-1"]
    scheduler.set_quota("ann", None)
    assert [d.job_id for d in scheduler.place().decisions] == ["ann-2"]


def test_a_job_becomes_placeable_when_its_owners_job_ends() -> None:
    scheduler = PlacementCore()
    scheduler.update_host(host("a", 4))
    scheduler.set_quota("ann", 1)
    scheduler.submit_many([job("ann-1", seq=1, owner="ann"), job("ann-2", seq=2, owner="ann")])
    assert [d.job_id for d in scheduler.place().decisions] == ["ann-1"]
    assert scheduler.gpus_in_use("ann") == 1
    scheduler.release("ann-1")
    assert scheduler.gpus_in_use("ann") == 0
    assert [d.job_id for d in scheduler.place().decisions] == ["ann-2"]


def test_the_queue_report_says_which_jobs_a_quota_holds_and_their_gpus() -> None:
    scheduler = PlacementCore()
    scheduler.update_host(host("a", 4))
    scheduler.set_quota("ann", 2)
    scheduler.submit_many(
        [
            job("ann-1", seq=1, gpus=2, owner="ann"),
            job("ann-2", seq=2, owner="ann"),
            job("ann-3", seq=3, gpus=3, owner="ann"),
            job("bob-1", seq=4, gpus=4, owner="bob"),
        ]
    )
    scheduler.place()
    slots = {slot.job_id: slot for slot in scheduler.report()}
    assert set(slots) == {"ann-2", "ann-3", "bob-1"}
    assert [slots[j].gpu_count for j in ("ann-2", "ann-3", "bob-1")] == [1, 3, 4]
    assert slots["ann-2"].blocked_by == OWNER_GPU_QUOTA
    assert "2 of its max_gpus 2" in (slots["ann-2"].blocked_reason or "")
    assert slots["ann-3"].blocked_by == OWNER_GPU_QUOTA
    assert "more than owner 'ann''s max_gpus of 2" in (slots["ann-3"].blocked_reason or "")
    assert slots["ann-3"].estimated_wait_s is None  # never, until the quota is raised
    assert slots["bob-1"].blocked_by is None


def test_the_wait_estimate_gives_the_owners_gpus_back_when_its_job_ends() -> None:
    scheduler = PlacementCore()
    scheduler.update_host(host("a", 4))
    scheduler.set_quota("ann", 1)
    scheduler.submit_many(
        [job("ann-1", seq=1, owner="ann", duration=60.0), job("ann-2", seq=2, owner="ann")]
    )
    scheduler.place()
    [slot] = scheduler.report()
    assert (slot.job_id, slot.estimated_wait_s) == ("ann-2", 60.0)


# --- fair share -----------------------------------------------------------------------------


def test_among_equal_priorities_the_owner_with_fewer_gpus_goes_first() -> None:
    held = [running("ann-0", "a", (0,), owner="ann")]
    queued = [job("ann-1", seq=1, owner="ann"), job("bob-1", seq=2, owner="bob")]
    assert placed_ids(queued, 2, held) == ["bob-1"]


def test_gpus_placed_earlier_in_the_same_pass_count() -> None:
    queued = [
        job("ann-1", seq=1, owner="ann"),
        job("ann-2", seq=2, owner="ann"),
        job("ann-3", seq=3, owner="ann"),
        job("bob-1", seq=4, owner="bob"),
        job("bob-2", seq=5, owner="bob"),
    ]
    # ann-1 first (FIFO at 0 each); then bob has fewer, then they alternate.
    assert placed_ids(queued, 4) == ["ann-1", "bob-1", "ann-2", "bob-2"]


def test_fair_share_counts_gpus_not_jobs() -> None:
    queued = [
        job("ann-big", seq=1, gpus=3, owner="ann"),
        job("bob-1", seq=2, owner="bob"),
        job("bob-2", seq=3, owner="bob"),
        job("ann-1", seq=4, owner="ann"),
    ]
    assert placed_ids(queued, 6) == ["ann-big", "bob-1", "bob-2", "ann-1"]


def test_priority_comes_before_fair_share() -> None:
    held = [running("ann-0", "a", (0, 1, 2), owner="ann")]
    queued = [
        job("bob-1", seq=1, priority=4, owner="bob"),
        job("ann-1", seq=2, priority=5, owner="ann"),
    ]
    assert placed_ids(queued, 4, held) == ["ann-1"]


def test_with_one_owner_fair_share_is_first_come_first_served() -> None:
    queued = [job(f"j{n}", seq=n, owner="ann") for n in (3, 1, 2)]
    assert placed_ids(queued, 2) == ["j1", "j2"]


def test_the_fair_share_winner_becomes_the_head_that_reserves() -> None:
    """With nothing free, the reservation goes to the job fair share ranks first."""
    held = [
        running("ann-0", "a", (0,), 30.0, owner="ann"),
        running("x", "a", (1,), 10.0),
    ]
    queued = [job("ann-1", seq=1, gpus=2, owner="ann"), job("bob-1", seq=2, gpus=2, owner="bob")]
    result = place_jobs(queued, [host("a", 2)], held)
    assert [r.job_id for r in result.reservations] == ["bob-1"]
