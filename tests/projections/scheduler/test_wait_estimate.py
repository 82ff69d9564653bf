"""Queue positions and wait estimates from the forward simulation."""

from __future__ import annotations

from swift_trainer.projections.scheduler import (
    PlacementCore,
    PlacementPolicy,
    QueueSlot,
    place_jobs,
)

from .builders import host, job, running


def waits(entries: tuple[QueueSlot, ...]) -> dict[str, float | None]:
    return {entry.job_id: entry.estimated_wait_s for entry in entries}


def test_known_remaining_times_give_start_estimates() -> None:
    hosts = [host("a", 2)]
    busy = [running("r1", "a", (0,), 100), running("r2", "a", (1,), 300)]
    queued = [
        job("first", seq=1, duration=50),
        job("second", seq=2),  # unknown duration: its GPU never frees in the simulation
        job("pair", seq=3, gpus=2),
    ]
    result = place_jobs(queued, hosts, busy)
    assert result.decisions == ()
    # first starts when r1 ends; second when first ends; pair would need second's GPU.
    assert waits(result.queue) == {"first": 100.0, "second": 150.0, "pair": None}
    assert [(q.job_id, q.position) for q in result.queue] == [
        ("first", 1),
        ("second", 2),
        ("pair", 3),
    ]


def test_unknown_remaining_time_means_no_estimate() -> None:
    result = place_jobs([job("j")], [host("a", 1)], [running("r", "a", (0,))])
    assert waits(result.queue) == {"j": None}


def test_jobs_behind_jobs_of_known_length_get_estimates() -> None:
    hosts = [host("a", 1)]
    queued = [job(f"j{i}", seq=i, duration=10) for i in range(4)]
    result = place_jobs(queued, hosts, [running("r", "a", (0,), 5)])
    assert waits(result.queue) == {"j0": 5.0, "j1": 15.0, "j2": 25.0, "j3": 35.0}


def test_the_simulation_backfills_like_the_live_scheduler() -> None:
    hosts = [host("a", 2), host("b", 1)]
    busy = [running("ra", "a", (0,), 100), running("rb", "b", (0,), 10)]
    queued = [job("pair", priority=9, gpus=2, seq=1, duration=60), job("one", seq=2)]
    result = place_jobs(queued, hosts, busy)
    # pair holds a's free GPU until ra ends; one starts on b when rb ends, before pair.
    assert waits(result.queue) == {"pair": 100.0, "one": 10.0}


def test_strict_fifo_estimates_respect_the_order() -> None:
    hosts = [host("a", 2), host("b", 1)]
    busy = [running("ra", "a", (0,), 100), running("rb", "b", (0,), 10)]
    queued = [job("pair", priority=9, gpus=2, seq=1, duration=60), job("one", seq=2)]
    result = place_jobs(queued, hosts, busy, PlacementPolicy(backfill=False))
    assert waits(result.queue) == {"pair": 100.0, "one": 100.0}


def test_a_job_that_fits_now_waits_zero_seconds() -> None:
    scheduler = PlacementCore()
    scheduler.update_host(host("a", 1))
    scheduler.submit(job("j"))
    assert waits(scheduler.report()) == {"j": 0.0}


def test_only_the_first_jobs_are_simulated() -> None:
    hosts = [host("a", 1)]
    queued = [job(f"j{i}", seq=i, duration=10) for i in range(5)]
    result = place_jobs(
        queued, hosts, [running("r", "a", (0,), 5)], PlacementPolicy(estimate_limit=2)
    )
    assert waits(result.queue) == {"j0": 5.0, "j1": 15.0, "j2": None, "j3": None, "j4": None}
    assert [q.position for q in result.queue] == [1, 2, 3, 4, 5]


def test_unplaceable_jobs_get_a_position_and_a_reason_but_no_estimate() -> None:
    queued = [job("huge", priority=9, gpus=4, seq=1), job("small", seq=2, duration=5)]
    result = place_jobs(queued, [host("a", 2)], [running("r", "a", (0, 1), 30)])
    assert [(q.job_id, q.position, q.estimated_wait_s) for q in result.queue] == [
        ("huge", 1, None),
        ("small", 2, 30.0),
    ]
    assert result.queue[0].unplaceable is not None
    assert result.queue[1].unplaceable is None


def test_the_report_does_not_change_the_scheduler() -> None:
    scheduler = PlacementCore()
    scheduler.update_host(host("a", 1))
    scheduler.assign(running("r", "a", (0,), 5))
    scheduler.submit(job("j", duration=10))
    before = scheduler.report()
    assert scheduler.report() == before
    assert scheduler.place().decisions == ()
    assert scheduler.running_jobs() == [running("r", "a", (0,), 5)]
