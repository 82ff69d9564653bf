"""A scheduler's event-derived state at a position, so a cold start folds only what follows.

Replaying a long EVENTS stream message by message took most of a minute at a million
events; a checkpoint in the store's snapshots table, plus the store's events after it,
takes a second. Only what the events decide is kept (jobs, submission positions, jobs at
rest, the GPU ledger, the processor switch, refusal cool-downs, owners' GPU quotas); what
this instance saw itself (heartbeats, in-flight placements, when it first saw each job)
starts afresh, as it does for any new scheduler.

Like every snapshot it is a cache, never an authority: the events after its position are
always applied on top, and one that cannot be read is ignored (a full replay follows).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Final

import msgspec

from swift_trainer.core.fleet import FleetState
from swift_trainer.core.gpu_ledger import Claim
from swift_trainer.core.job import JobState
from swift_trainer.core.queue_processor import QueueProcessorState
from swift_trainer.core.store import RecordedEvent, SnapshotStore

_log = logging.getLogger(__name__)

#: The key in the snapshots table; no event stream is named like this.
CHECKPOINT_STREAM: Final = "scheduler-checkpoint"
#: Bumped when the shape changes: an older checkpoint is then ignored, not misread.
CHECKPOINT_SCHEMA: Final = 2


class Cooldown(msgspec.Struct, frozen=True, array_like=True):
    """A queued job held out of placement after a refusal: until when, and why.

    Encoded as a two-item array, so checkpoints keep their shape.
    """

    until: datetime
    why: str


class SchedulerCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    schema: int = CHECKPOINT_SCHEMA
    position: int
    malformed: int = 0
    jobs: dict[str, JobState] = {}
    seqs: dict[str, int] = {}
    #: Jobs at rest with their submission positions, oldest first.
    dormant: list[tuple[JobState, int]] = []
    dormant_evicted: int = 0
    forgotten: dict[str, list[RecordedEvent]] = {}
    claims: dict[str, Claim] = {}
    ledger_version: int = 0
    processor: QueueProcessorState = QueueProcessorState()
    cooling: dict[str, Cooldown] = {}
    refusals: dict[str, int] = {}
    #: Owners' ``max_gpus`` as the access stream last set them (schema 2).
    max_gpus: dict[str, int | None] = {}
    #: Drained runners and GPU health, as the fleet's events left them.
    fleet: FleetState = FleetState()


_decoder: Final = msgspec.msgpack.Decoder(SchedulerCheckpoint)
_encoder: Final = msgspec.msgpack.Encoder()


def encode_checkpoint(checkpoint: SchedulerCheckpoint) -> bytes:
    return _encoder.encode(checkpoint)


def decode_checkpoint(payload: bytes) -> SchedulerCheckpoint | None:
    """The checkpoint, or None (logged) when it is unreadable or of another schema."""
    try:
        checkpoint = _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        _log.warning("ignoring an unreadable scheduler checkpoint: %s", exc)
        return None
    if checkpoint.schema != CHECKPOINT_SCHEMA:
        _log.info("ignoring a scheduler checkpoint of schema %d", checkpoint.schema)
        return None
    return checkpoint


async def save_checkpoint(store: SnapshotStore, checkpoint: SchedulerCheckpoint) -> None:
    """Keep it unless a newer one is stored (another leader's, say)."""
    if checkpoint.position > 0:
        await store.save_snapshot(
            CHECKPOINT_STREAM, checkpoint.position, encode_checkpoint(checkpoint)
        )


async def load_checkpoint(store: SnapshotStore) -> SchedulerCheckpoint | None:
    snapshot = await store.load_snapshot(CHECKPOINT_STREAM)
    return None if snapshot is None else decode_checkpoint(snapshot.payload)
