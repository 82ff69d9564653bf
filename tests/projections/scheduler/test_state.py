"""The scheduler's projection without a bus: events and heartbeats in, core and actions out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from tests.projections.conftest import heartbeat, spec

from swift_trainer.core import events as e
from swift_trainer.core.access import ACCESS_STREAM, AccessEvent, KeyIssued, QuotaSet
from swift_trainer.core.gpu_ledger import Claim
from swift_trainer.core.ids import GPU_LEDGER_STREAM, job_stream
from swift_trainer.core.inventory import RunnerHeartbeat, RunnerJob
from swift_trainer.core.store import EventMetadata, RecordedEvent
from swift_trainer.projections.scheduler.gpu_choice import host_snapshot
from swift_trainer.projections.scheduler.state import SchedulerState, claim_key

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Log:
    """Recorded events with growing positions, as the feed delivers them."""

    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []

    def add(self, *events: e.Event) -> list[RecordedEvent]:
        batch = []
        for event in events:
            job_id = getattr(event, "job_id", "")
            stream = (
                GPU_LEDGER_STREAM
                if isinstance(event, e.GpusClaimed | e.GpusReleased)
                else job_stream(job_id)
            )
            recorded = RecordedEvent(
                position=len(self.events) + 1,
                stream_id=stream,
                version=1,
                event_id=f"e{len(self.events) + 1}",
                type=e.event_type(event),
                schema_version=1,
                payload=e.encode_event(event),
                metadata=EventMetadata(),
                recorded_at=T0,
            )
            self.events.append(recorded)
            batch.append(recorded)
        return batch


def submitted(job_id: str, priority: int = 5, gpu_count: int = 1) -> list[e.Event]:
    return [
        e.JobSubmitted(
            at=T0, job_id=job_id, spec=spec(job_id, priority=priority, gpu_count=gpu_count)
        ),
        e.JobQueued(at=T0, job_id=job_id, priority=priority),
    ]


def scheduled(job_id: str, attempt: int, runner: str, *gpus: int) -> e.JobScheduled:
    return e.JobScheduled(at=T0, job_id=job_id, attempt=attempt, runner_id=runner, gpu_ids=gpus)


def claimed(job_id: str, attempt: int, runner: str, *gpus: int) -> e.GpusClaimed:
    return e.GpusClaimed(at=T0, job_id=job_id, attempt=attempt, runner_id=runner, gpu_ids=gpus)


def with_runner(gpus: int = 2) -> SchedulerState:
    state = SchedulerState()
    state.update_runner(heartbeat("r1", gpus=gpus, at=T0, lease_s=60))
    return state


def test_jobs_queue_in_priority_then_submission_order_and_place_on_free_gpus() -> None:
    state, log = with_runner(gpus=1), Log()
    assert state.apply(log.add(*submitted("late-low", 1), *submitted("a"), *submitted("b")))
    assert [job.job_id for job in state.placement.queued_jobs()] == ["a", "b", "late-low"]
    assert [job.seq for job in state.placement.queued_jobs()] == [3, 5, 1]
    decisions = state.placement.place().decisions
    assert [(d.job_id, d.attempt, d.gpu_ids) for d in decisions] == [("a", 1, (0,))]


def test_a_batch_applied_twice_changes_nothing() -> None:
    state, log = with_runner(), Log()
    batch = log.add(*submitted("a"), scheduled("a", 1, "r1", 0))
    state.apply(batch)
    before = (state.position, state.placement.running_jobs(), state.placement.queued_jobs())
    assert not state.apply(batch)
    assert (state.position, state.placement.running_jobs(), state.placement.queued_jobs()) == before


def test_an_undecodable_event_is_skipped_and_counted() -> None:
    state, log = with_runner(), Log()
    good = log.add(*submitted("a"))
    bad = RecordedEvent(
        position=3,
        stream_id="job-x",
        version=1,
        event_id="bad",
        type="NoSuchEvent",
        schema_version=1,
        payload=b"{}",
        metadata=EventMetadata(),
        recorded_at=T0,
    )
    state.apply([*good, bad])
    assert state.malformed == 1
    assert state.position == 3
    assert state.placement.queue_length == 1


def test_a_claim_for_the_next_attempt_holds_the_job_on_its_gpus() -> None:
    state, log = with_runner(), Log()
    state.apply(log.add(*submitted("a"), *submitted("b"), claimed("a", 1, "r1", 1)))
    assert [job.job_id for job in state.placement.queued_jobs()] == ["b"]
    assert state.placement.running_job("a") is not None
    assert [(d.job_id, d.gpu_ids) for d in state.placement.place().decisions] == [("b", (0,))]


def test_a_claim_of_an_ended_attempt_blocks_its_gpus_until_released() -> None:
    state, log = with_runner(), Log()
    state.apply(
        log.add(
            *submitted("a"),
            claimed("a", 1, "r1", 0),
            scheduled("a", 1, "r1", 0),
            e.JobSucceeded(at=T0, job_id="a", attempt=1),
            *submitted("b"),
            *submitted("c"),
        )
    )
    assert state.placement.running_job(claim_key("a")) is not None
    assert [(d.job_id, d.gpu_ids) for d in state.placement.place().decisions] == [("b", (1,))]
    actions = state.reconcile()
    assert [(x.kind, x.claim.job_id) for x in actions] == [("release", "a")]
    state.apply(log.add(e.GpusReleased(at=T0, job_id="a", attempt=1, runner_id="r1", gpu_ids=(0,))))
    assert state.placement.running_job(claim_key("a")) is None
    assert [(d.job_id, d.gpu_ids) for d in state.placement.place().decisions] == [("c", (0,))]


def test_reconcile_keeps_live_claims_completes_dangling_ones_releases_the_rest() -> None:
    state, log = with_runner(gpus=8), Log()
    state.apply(
        log.add(
            *submitted("live"),
            claimed("live", 1, "r1", 0),
            scheduled("live", 1, "r1", 0),
            *submitted("dangling"),
            claimed("dangling", 1, "r1", 1),
            *submitted("lost"),
            claimed("lost", 1, "r1", 2),
            scheduled("lost", 1, "r1", 2),
            e.JobLost(at=T0, job_id="lost", attempt=1, runner_id="r1", reason="x"),
            e.JobRequeued(at=T0, job_id="lost", priority=5, retries=1, reason="x"),
            *submitted("stopped"),
            claimed("stopped", 1, "r1", 3),
            e.JobStopped(at=T0, job_id="stopped", reason="user"),
            claimed("ghost", 1, "r1", 4),
        )
    )
    actions = {x.claim.job_id: x.kind for x in state.reconcile()}
    assert actions == {
        "dangling": "complete",
        "lost": "release",
        "stopped": "release",
        "ghost": "release",
    }
    state.begin("dangling")
    assert "dangling" not in {x.claim.job_id for x in state.reconcile()}, "in flight here"


def test_a_placement_in_flight_stays_until_its_events_come_back() -> None:
    state, log = with_runner(gpus=1), Log()
    state.apply(log.add(*submitted("a"), *submitted("b")))
    decision = state.placement.place().decisions[0]
    state.begin(decision.job_id)
    state.apply(log.add(claimed("a", 1, "r1", 0)))
    state.settle("a", until_position=6)
    assert state.placement.running_job("a") is not None
    assert state.placement.place().decisions == ()
    state.apply(log.add(scheduled("a", 1, "r1", 0)))
    assert state.pending == {}
    assert state.placement.running_job("a") is not None


def test_a_refused_placement_puts_the_job_back_in_the_queue() -> None:
    state, log = with_runner(gpus=1), Log()
    state.apply(log.add(*submitted("a")))
    state.begin(state.placement.place().decisions[0].job_id)
    assert state.placement.queue_length == 0
    state.settle("a")
    assert [job.job_id for job in state.placement.queued_jobs()] == ["a"]


def test_jobs_on_a_runner_past_its_lease_are_lost() -> None:
    state, log = SchedulerState(), Log()
    state.update_runner(heartbeat("r1", gpus=1, at=T0, lease_s=10))
    state.apply(
        log.add(
            *submitted("a"),
            scheduled("a", 1, "r1", 0),
            *submitted("b"),
            scheduled("b", 1, "gone", 0),
        )
    )
    assert [(x.job_id, x.runner_id) for x in state.lost_jobs(T0)] == [("b", "gone")]
    later = T0 + timedelta(seconds=10)
    assert [(x.job_id, x.attempt) for x in state.lost_jobs(later)] == [("a", 1), ("b", 1)]
    state.refresh(later)
    host = state.placement.host("r1")
    assert host is not None
    assert not host.alive


def test_a_removed_runner_takes_no_work_but_keeps_its_jobs_until_its_lease_ends() -> None:
    state, log = with_runner(), Log()
    state.apply(log.add(*submitted("a"), scheduled("a", 1, "r1", 0), *submitted("b")))
    state.remove_runner("r1")
    assert state.placement.place().decisions == ()
    assert state.lost_jobs(T0 + timedelta(seconds=59)) == []
    assert len(state.lost_jobs(T0 + timedelta(seconds=60))) == 1


def test_remaining_times_age_with_the_clock() -> None:
    state, log = with_runner(gpus=1), Log()
    state.apply(
        log.add(
            *submitted("a"),
            scheduled("a", 1, "r1", 0),
            e.JobProgressed(at=T0, job_id="a", attempt=1, step=1, remaining_s=100.0),
            *submitted("b"),
        )
    )
    state.refresh(T0 + timedelta(seconds=30))
    (entry,) = state.placement.report()
    assert entry.estimated_wait_s == 70.0


def test_a_heartbeat_becomes_a_host_snapshot() -> None:
    beat = heartbeat("r1", gpus=3, at=T0, lease_s=15, foreign={1: 4096}, suspect=[2])
    host = host_snapshot(beat)
    assert host.lease_expires_at == T0 + timedelta(seconds=15)
    assert [g.foreign_memory_mib for g in host.gpus] == [0, 4096, 0]
    assert [g.healthy for g in host.gpus] == [True, True, False]
    assert host.alive
    assert not host_snapshot(heartbeat("r1", draining=True)).alive
    seen = T0 + timedelta(hours=1)
    assert host_snapshot(beat, seen).lease_expires_at == seen + timedelta(seconds=15)


def test_claims_are_tracked_from_the_ledger_events() -> None:
    state, log = with_runner(), Log()
    state.apply(log.add(*submitted("a"), claimed("a", 1, "r1", 0, 1)))
    assert state.ledger.claims == {"a": Claim("a", 1, "r1", (0, 1))}
    assert state.gpu_uuids("r1", (0, 1)) == ("GPU-r1-0", "GPU-r1-1")
    assert state.gpu_uuids("nowhere", (0,)) == ()


# --- healing rules ------------------------------------------------------------------------------


def _listing(runner: str, at: datetime, *jobs: tuple[str, int]) -> RunnerHeartbeat:
    beat = heartbeat(runner, gpus=2, at=at, lease_s=600)
    return msgspec.structs.replace(
        beat, jobs=tuple(RunnerJob(job_id=j, attempt=a, pid=1) for j, a in jobs)
    )


def test_a_scheduled_job_without_a_start_report_is_overdue_after_the_bound() -> None:
    state, log = with_runner(), Log()
    state.apply(log.add(*submitted("a")), T0)
    state.apply(log.add(claimed("a", 1, "r1", 0), scheduled("a", 1, "r1", 0)), T0)
    assert state.overdue_starts(T0 + timedelta(seconds=59), 60) == []
    [late] = state.overdue_starts(T0 + timedelta(seconds=60), 60)
    assert (late.job_id, late.attempt, late.runner_id) == ("a", 1, "r1")
    assert "did not report a start of attempt 1 within 60s" in late.reason
    # Once started, the bound no longer applies.
    state.apply(
        log.add(e.JobStarted(at=T0, job_id="a", attempt=1, runner_id="r1", pid=7, command=())),
        T0 + timedelta(seconds=61),
    )
    assert state.overdue_starts(T0 + timedelta(seconds=600), 60) == []


def test_the_start_bound_counts_from_when_this_instance_saw_the_placement() -> None:
    """A leader that replays old history gives every job a fresh bound, so a takeover
    never marks a whole cluster's placements lost at once."""
    state, log = with_runner(), Log()
    later = T0 + timedelta(hours=1)
    state.apply(
        log.add(*submitted("a"), claimed("a", 1, "r1", 0), scheduled("a", 1, "r1", 0)), later
    )
    assert state.overdue_starts(later + timedelta(seconds=30), 60) == []


def test_a_running_job_missing_from_its_runners_heartbeats_vanishes_after_two_and_the_grace() -> (
    None
):
    state, log = with_runner(), Log()
    state.apply(log.add(*submitted("a"), *submitted("b")), T0)
    state.apply(
        log.add(
            claimed("a", 1, "r1", 0),
            scheduled("a", 1, "r1", 0),
            e.JobStarted(at=T0, job_id="a", attempt=1, runner_id="r1", pid=7, command=()),
            claimed("b", 1, "r1", 1),
            scheduled("b", 1, "r1", 1),
            e.JobStarted(at=T0, job_id="b", attempt=1, runner_id="r1", pid=8, command=()),
        ),
        T0,
    )
    # A heartbeat built before the start may arrive just after it: it does not count.
    state.update_runner(_listing("r1", T0, ("b", 1)), T0 + timedelta(milliseconds=500))
    assert state.absent == {}
    first = T0 + timedelta(seconds=2)
    state.update_runner(_listing("r1", first, ("b", 1)), first)
    # One heartbeat is never enough, however long ago.
    assert state.vanished(first + timedelta(seconds=100), 10) == []
    state.update_runner(_listing("r1", first, ("b", 1)), first + timedelta(seconds=2))
    assert state.vanished(first + timedelta(seconds=9), 10) == []
    [gone] = state.vanished(first + timedelta(seconds=10), 10)
    assert (gone.job_id, gone.attempt) == ("a", 1)
    assert "runs no process of attempt 1" in gone.reason
    # A heartbeat that lists it again clears the count.
    state.update_runner(_listing("r1", first, ("a", 1), ("b", 1)), first + timedelta(seconds=11))
    assert state.vanished(first + timedelta(seconds=60), 10) == []


def test_healing_state_is_dropped_with_the_job() -> None:
    state, log = with_runner(), Log()
    state.apply(log.add(*submitted("a"), claimed("a", 1, "r1", 0), scheduled("a", 1, "r1", 0)), T0)
    assert "a" in state.entered
    state.apply(
        log.add(
            e.JobStarted(at=T0, job_id="a", attempt=1, runner_id="r1", pid=7, command=()),
            e.JobSucceeded(at=T0, job_id="a", attempt=1),
        ),
        T0,
    )
    assert state.entered == {}
    assert state.absent == {}


def _refused(log: Log, state: SchedulerState, job_id: str, attempt: int, at: datetime) -> None:
    state.apply(log.add(claimed(job_id, attempt, "r1", 0), scheduled(job_id, attempt, "r1", 0)), at)
    state.apply(
        log.add(
            e.AssignmentRejected(
                at=at, job_id=job_id, attempt=attempt, runner_id="r1", reason="still stopping"
            ),
            e.JobRequeued(at=at, job_id=job_id, priority=5, retries=attempt, reason="rejected"),
        ),
        at,
    )


def test_a_refused_job_is_held_back_with_a_doubling_wait_and_shown_why() -> None:
    """Placed again at once, a refusal that repeats (the old attempt still stopping on that
    runner) would burn every retry within seconds."""
    state, log = with_runner(), Log()
    state.apply(log.add(*submitted("a")), T0)
    _refused(log, state, "a", 1, T0)
    assert [job.job_id for job in state.placement.queued_jobs()] == []
    [(job_id, priority, why)] = state.held_back()
    assert (job_id, priority) == ("a", 5)
    assert "runner r1 refused attempt 1 (still stopping)" in why
    state.refresh(T0 + timedelta(seconds=1.9))
    assert state.placement.place().decisions == ()
    state.refresh(T0 + timedelta(seconds=2))
    assert [d.job_id for d in state.placement.place().decisions] == ["a"]
    assert state.held_back() == []
    # A second refusal in a row waits twice as long.
    later = T0 + timedelta(seconds=3)
    _refused(log, state, "a", 2, later)
    state.refresh(later + timedelta(seconds=3.9))
    assert state.placement.place().decisions == ()
    state.refresh(later + timedelta(seconds=4))
    assert [d.job_id for d in state.placement.place().decisions] == ["a"]


def test_api_key_events_are_skipped_quietly() -> None:
    """The access stream (API keys, quotas) shares the log; it is not a malformed job."""
    state = SchedulerState()
    issued = KeyIssued(at=T0, key_id="k1", owner="alice", role="user", secret_sha256="0" * 64)
    recorded = RecordedEvent(
        position=1,
        stream_id=ACCESS_STREAM,
        version=1,
        event_id="ev-1",
        type="KeyIssued",
        schema_version=1,
        payload=msgspec.json.encode(issued),
        metadata=EventMetadata(),
        recorded_at=T0,
    )
    assert not state.apply([recorded], T0)
    assert state.malformed == 0
    assert state.position == 1


def access_event(log: Log, event: AccessEvent) -> RecordedEvent:
    """An event of the access stream, at the log's next position."""
    recorded = RecordedEvent(
        position=len(log.events) + 1,
        stream_id=ACCESS_STREAM,
        version=1,
        event_id=f"e{len(log.events) + 1}",
        type=type(event).__name__,
        schema_version=1,
        payload=msgspec.json.encode(event),
        metadata=EventMetadata(),
        recorded_at=T0,
    )
    log.events.append(recorded)
    return recorded


def owned(job_id: str, owner: str, gpu_count: int = 1) -> list[e.Event]:
    return [
        e.JobSubmitted(at=T0, job_id=job_id, spec=spec(job_id, gpu_count=gpu_count, owner=owner)),
        e.JobQueued(at=T0, job_id=job_id, priority=5),
    ]


def test_a_quota_set_on_the_access_stream_limits_the_owners_gpus() -> None:
    state, log = with_runner(gpus=4), Log()
    state.apply(log.add(*owned("ann-1", "ann"), *owned("ann-2", "ann"), *owned("bob-1", "bob")))
    assert state.apply([access_event(log, QuotaSet(at=T0, owner="ann", max_gpus=1))])
    assert state.max_gpus == {"ann": 1}
    decisions = state.placement.place().decisions
    assert [d.job_id for d in decisions] == ["ann-1", "bob-1"]
    # Lifted: the waiting job goes on the next pass.
    assert state.apply([access_event(log, QuotaSet(at=T0, owner="ann", max_gpus=None))])
    assert [d.job_id for d in state.placement.place().decisions] == ["ann-2"]


def test_gpus_of_scheduled_jobs_and_their_claims_count_for_their_owner() -> None:
    state, log = with_runner(gpus=4), Log()
    state.apply(log.add(*owned("ann-1", "ann", 2), *owned("ann-2", "ann")))
    state.apply([access_event(log, QuotaSet(at=T0, owner="ann", max_gpus=2))])
    state.apply(log.add(claimed("ann-1", 1, "r1", 0, 1)))  # a claim in flight holds them
    assert state.placement.gpus_in_use("ann") == 2
    assert state.placement.place().decisions == ()
    state.apply(log.add(scheduled("ann-1", 1, "r1", 0, 1)))
    assert state.placement.gpus_in_use("ann") == 2
    assert [slot.blocked_by for slot in state.placement.report()] == ["owner_gpu_quota"]
    state.apply(log.add(e.JobStopped(at=T0, job_id="ann-1", attempt=1, reason="by hand")))
    # The ledger claim outlives the attempt until the leader releases it: still ann's GPUs.
    assert state.placement.gpus_in_use("ann") == 2
    state.apply(
        log.add(
            e.GpusReleased(
                at=T0, job_id="ann-1", attempt=1, runner_id="r1", gpu_ids=(0, 1), reason="ended"
            )
        )
    )
    assert state.placement.gpus_in_use("ann") == 0
    assert [d.job_id for d in state.placement.place().decisions] == ["ann-2"]


def test_a_malformed_access_event_is_skipped_and_counted() -> None:
    state, log = SchedulerState(), Log()
    bad = access_event(log, QuotaSet(at=T0, owner="ann", max_gpus=1))
    bad = msgspec.structs.replace(bad, payload=b'{"owner": 5}')
    assert not state.apply([bad])
    assert state.malformed == 1
    assert state.max_gpus == {}


def _gang_events(job_id: str) -> list[e.Event]:
    from swift_trainer.core.gang import RankPlacement

    gang_spec = msgspec.structs.replace(spec(job_id, gpu_count=2), nodes=2)
    peers = (RankPlacement(rank=1, runner_id="r2", gpu_ids=(0, 1)),)
    return [
        e.JobSubmitted(at=T0, job_id=job_id, spec=gang_spec),
        e.JobQueued(at=T0, job_id=job_id, priority=5),
        e.GpusClaimed(at=T0, job_id=job_id, attempt=1, runner_id="r1", gpu_ids=(0, 1), peers=peers),
        e.JobScheduled(
            at=T0, job_id=job_id, attempt=1, runner_id="r1", gpu_ids=(0, 1), peers=peers
        ),
        e.JobStarted(at=T0, job_id=job_id, attempt=1, runner_id="r1", pid=7, command=()),
    ]


def test_a_gang_whose_ranks_do_not_all_start_is_overdue_after_the_gang_timeout() -> None:
    state, log = with_runner(), Log()
    state.update_runner(heartbeat("r2", gpus=2, at=T0, lease_s=60))
    state.apply(log.add(*_gang_events("g")), T0)
    assert state.placement.jobs_on("r2") == ("g",), "every rank holds its GPUs"
    assert state.gang_overdue(T0 + timedelta(seconds=299), 300) == []
    [late] = state.gang_overdue(T0 + timedelta(seconds=300), 300)
    assert (late.job_id, late.attempt) == ("g", 1)
    assert "ranks [1] of attempt 1 did not start within the gang start timeout" in late.reason
    state.apply(
        log.add(e.RankStarted(at=T0, job_id="g", attempt=1, rank=1, runner_id="r2", pid=8)),
        T0 + timedelta(seconds=10),
    )
    assert state.gang_overdue(T0 + timedelta(seconds=900), 300) == []


def test_a_gang_is_lost_with_any_of_its_runners() -> None:
    state, log = with_runner(), Log()
    state.update_runner(heartbeat("r2", gpus=2, at=T0, lease_s=5))
    state.apply(log.add(*_gang_events("g")), T0)
    assert state.lost_jobs(T0 + timedelta(seconds=4)) == []
    [lost] = state.lost_jobs(T0 + timedelta(seconds=5))
    assert (lost.job_id, lost.runner_id) == ("g", "r2")
