"""A scheduler started from a checkpoint must decide exactly as one that replayed the log."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from tests.projections.conftest import heartbeat
from tests.projections.read_models.history import fleet_history, random_history

from swift_trainer.core import events as e
from swift_trainer.core.access import QuotaSet
from swift_trainer.core.store import RecordedEvent, Snapshot
from swift_trainer.projections.scheduler.state import SchedulerState, claim_key
from swift_trainer.projections.scheduler.state_checkpoint import (
    CHECKPOINT_STREAM,
    SchedulerCheckpoint,
    decode_checkpoint,
    encode_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

from .test_state import Log, access_event, claimed, owned, scheduled, submitted

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def picture(state: SchedulerState) -> object:
    """Everything a decision reads, and the decisions themselves."""
    return (
        state.position,
        state.malformed,
        state.jobs,
        state.seqs,
        state.dormant.entries(),
        state.dormant.evicted,
        state.forgotten,
        state.ledger,
        state.processor,
        state.cooling,
        state.refusals,
        state.max_gpus,
        sorted(state.entered),
        state.placement.running_jobs(),
        state.placement.report(),
        state.reconcile(),
        state.lost_jobs(NOW),
        state.placement.place().decisions,
    )


def fresh(at_rest: int) -> SchedulerState:
    state = SchedulerState(max_jobs_at_rest=at_rest)
    for runner in ("runner-a", "runner-b"):
        state.update_runner(heartbeat(runner, gpus=4, at=NOW, lease_s=3600))
    return state


def replayed(records: list[RecordedEvent], split: int, at_rest: int) -> tuple[object, object]:
    """(replayed from the start, loaded from a checkpoint at ``split`` then the rest)."""
    whole = fresh(at_rest)
    whole.apply(records[:split], NOW)
    whole.apply(records[split:], NOW)
    first = fresh(at_rest)
    first.apply(records[:split], NOW)
    payload = encode_checkpoint(first.checkpoint())
    checkpoint = decode_checkpoint(payload)
    assert checkpoint is not None
    loaded = fresh(at_rest)
    loaded.load_checkpoint(checkpoint, NOW)
    loaded.apply(records[split:], NOW)
    return picture(whole), picture(loaded)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_checkpoint_anywhere_in_a_random_log_decides_like_a_replay(seed: int) -> None:
    records = random_history(seed, jobs=8, steps=300).records
    for split in range(0, len(records) + 1, max(1, len(records) // 12)):
        whole, loaded = replayed(records, split, at_rest=3)
        assert loaded == whole, f"split at {split}"


@pytest.mark.parametrize("seed", [1, 2])
def test_a_checkpoint_in_a_busy_fleet_decides_like_a_replay(seed: int) -> None:
    records = fleet_history(seed, jobs=40).records
    for split in (1, len(records) // 3, len(records) // 2, len(records) - 1):
        whole, loaded = replayed(records, split, at_rest=5)
        assert loaded == whole, f"split at {split}"


def test_claims_and_stale_claims_come_back_from_a_checkpoint() -> None:
    log = Log()
    records = [
        *log.add(*submitted("a"), claimed("a", 1, "runner-a", 0), scheduled("a", 1, "runner-a", 0)),
        *log.add(*submitted("b"), claimed("b", 1, "runner-a", 1)),  # claimed, not yet scheduled
        *log.add(*submitted("c"), claimed("c", 1, "runner-b", 0), scheduled("c", 1, "runner-b", 0)),
        *log.add(e.JobSucceeded(at=NOW, job_id="c", attempt=1)),  # its claim is now stale
        *log.add(*submitted("d"), *submitted("e")),
    ]
    whole, loaded = replayed(records, len(records), at_rest=10)
    assert loaded == whole
    state = fresh(10)
    checkpoint = SchedulerState.checkpoint(_applied(records))
    state.load_checkpoint(checkpoint, NOW)
    assert state.placement.running_job(claim_key("c")) is not None
    assert state.placement.running_job("b") is not None
    assert [job.job_id for job in state.placement.queued_jobs()] == ["d", "e"]


def _applied(records: list[RecordedEvent]) -> SchedulerState:
    state = fresh(10)
    state.apply(records, NOW)
    return state


def test_owners_quotas_come_back_from_a_checkpoint() -> None:
    """A quota set before the checkpoint still holds after a start from it."""
    log = Log()
    records = [
        access_event(log, QuotaSet(at=NOW, owner="ann", max_gpus=1)),
        access_event(log, QuotaSet(at=NOW, owner="bob", max_gpus=3)),
        *log.add(*owned("ann-1", "ann"), *owned("ann-2", "ann"), *owned("bob-1", "bob")),
    ]
    for split in range(len(records) + 1):
        whole, loaded = replayed(records, split, at_rest=10)
        assert loaded == whole, f"split at {split}"
    state = fresh(10)
    state.load_checkpoint(_applied(records).checkpoint(), NOW)
    assert state.max_gpus == {"ann": 1, "bob": 3}
    assert [d.job_id for d in state.placement.place().decisions] == ["ann-1", "bob-1"]


def test_only_a_fresh_state_takes_a_checkpoint() -> None:
    log = Log()
    state = fresh(10)
    state.apply(log.add(*submitted("a")), NOW)
    with pytest.raises(ValueError, match="fresh"):
        state.load_checkpoint(SchedulerCheckpoint(position=9), NOW)


def test_an_unreadable_or_foreign_checkpoint_is_ignored() -> None:
    assert decode_checkpoint(b"\x00 not msgpack") is None
    assert decode_checkpoint(encode_checkpoint(SchedulerCheckpoint(schema=99, position=3))) is None


class Snapshots:
    """The snapshots table's rule, in memory: a newer version wins."""

    def __init__(self) -> None:
        self.kept: dict[str, Snapshot] = {}

    async def save_snapshot(self, stream_id: str, version: int, payload: bytes) -> None:
        known = self.kept.get(stream_id)
        if known is None or known.version < version:
            self.kept[stream_id] = Snapshot(stream_id, version, payload)

    async def load_snapshot(self, stream_id: str) -> Snapshot | None:
        return self.kept.get(stream_id)


async def test_saved_under_its_own_key_and_an_older_one_does_not_replace_a_newer() -> None:
    store = Snapshots()
    assert await load_checkpoint(store) is None
    await save_checkpoint(store, SchedulerCheckpoint(position=0))  # nothing applied: not saved
    assert store.kept == {}
    await save_checkpoint(store, SchedulerCheckpoint(position=20))
    await save_checkpoint(store, SchedulerCheckpoint(position=10))
    loaded = await load_checkpoint(store)
    assert loaded is not None and loaded.position == 20
    assert list(store.kept) == [CHECKPOINT_STREAM]


def test_a_cooldown_keeps_the_two_item_shape_of_older_checkpoints() -> None:
    import msgspec

    from swift_trainer.projections.scheduler.state_checkpoint import (
        Cooldown,
        decode_checkpoint,
    )

    until = datetime(2026, 1, 1, tzinfo=UTC)
    older = msgspec.msgpack.encode({"position": 7, "cooling": {"a": (until, "refused")}})
    checkpoint = decode_checkpoint(older)
    assert checkpoint is not None
    assert checkpoint.cooling == {"a": Cooldown(until, "refused")}
    again = msgspec.msgpack.decode(msgspec.msgpack.encode(checkpoint))
    assert again["cooling"] == {"a": [until, "refused"]}


def test_a_drain_comes_back_from_a_checkpoint_and_keeps_jobs_off_the_runner() -> None:
    log = Log()
    records = [
        *log.add(e.RunnerDrained(at=NOW, runner_id="runner-a", reason="DIMM swap")),
        *log.add(*submitted("j1")),
    ]
    whole = _applied(records)
    assert {d.runner_id for d in whole.placement.place().decisions} == {"runner-b"}
    state = fresh(10)
    state.load_checkpoint(whole.checkpoint(), NOW)
    assert state.fleet.drained["runner-a"].reason == "DIMM swap"
    # The next heartbeat of the drained runner does not bring it back into placement.
    state.update_runner(heartbeat("runner-a", gpus=4, at=NOW, lease_s=3600))
    assert {d.runner_id for d in state.placement.place().decisions} == {"runner-b"}
    # Undrained (and runner-b full): the job goes to runner-a.
    again = fresh(10)
    again.load_checkpoint(whole.checkpoint(), NOW)
    again.apply(log.add(e.RunnerUndrained(at=NOW, runner_id="runner-a")), NOW)
    again.update_runner(heartbeat("runner-b", gpus=0, at=NOW, lease_s=3600))
    assert {d.runner_id for d in again.placement.place().decisions} == {"runner-a"}
