"""The access aggregate: keys and quotas decided and folded, purely."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from swift_trainer.core import aggregates
from swift_trainer.core import commands as c
from swift_trainer.core.access import (
    ACCESS_STREAM,
    AccessState,
    KeyAlreadyExists,
    KeyIssued,
    KeyNotFound,
    decide_access,
    decode_access_event,
    evolve_access,
    hash_secret,
    new_secret,
)
from swift_trainer.core.errors import MessageError
from swift_trainer.core.events import JobSubmitted, decode_event, encode_event
from swift_trainer.core.spec import JobSpec

NOW = datetime(2026, 1, 1, tzinfo=UTC)
DIGEST = "a" * 64


def run(state: AccessState, command: c.AnyAccessCommand) -> tuple[AccessState, list[str]]:
    events = decide_access(state, command, NOW)
    for event in events:
        state = evolve_access(state, event)
    return state, [type(x).__name__ for x in events]


def test_issue_revoke_and_quota_are_recorded_once() -> None:
    state, names = run(
        AccessState(), c.IssueKey(key_id="k1", owner="a", role="user", secret_sha256=DIGEST)
    )
    assert names == ["KeyIssued"] and state.keys["k1"].active
    with pytest.raises(KeyAlreadyExists):
        decide_access(
            state, c.IssueKey(key_id="k1", owner="b", role="admin", secret_sha256=DIGEST), NOW
        )
    state, names = run(state, c.RevokeKey(key_id="k1"))
    assert names == ["KeyRevoked"] and not state.keys["k1"].active
    assert run(state, c.RevokeKey(key_id="k1"))[1] == []
    with pytest.raises(KeyNotFound):
        decide_access(state, c.RevokeKey(key_id="nope"), NOW)
    state, names = run(state, c.SetQuota(owner="a", max_gpus=2, max_queued_jobs=3))
    assert names == ["QuotaSet"] and state.quotas["a"].max_gpus == 2
    assert run(state, c.SetQuota(owner="a", max_gpus=2, max_queued_jobs=3))[1] == []
    assert state.version == 3


def test_secrets_are_random_and_only_their_hash_is_in_the_command() -> None:
    one, two = new_secret(), new_secret()
    assert one != two and one.startswith("stk_") and len(one) > 40
    command = c.IssueKey(key_id="k", owner="o", role="viewer", secret_sha256=hash_secret(one))
    assert one not in c.encode_command(command).decode()


def test_bad_commands_are_refused_on_decode() -> None:
    for bad in (
        b'{"type":"IssueKey","key_id":"k","owner":"o","role":"root","secret_sha256":"'
        + b"a" * 64
        + b'"}',
        b'{"type":"IssueKey","key_id":"k","owner":"o","role":"user","secret_sha256":"short"}',
        b'{"type":"SetQuota","owner":"o","max_gpus":-1}',
    ):
        with pytest.raises(MessageError):
            c.decode_command(bad)


def test_aggregates_route_access_commands_to_the_access_stream() -> None:
    command = c.IssueKey(key_id="k", owner="o", role="admin", secret_sha256=DIGEST)
    assert aggregates.stream_of(command) == ACCESS_STREAM
    state = aggregates.initial(ACCESS_STREAM)
    events = aggregates.decide_any(state, command, NOW)
    assert isinstance(aggregates.apply(state, events[0]), AccessState)
    event = KeyIssued(at=NOW, key_id="k", owner="o", role="admin", secret_sha256=DIGEST)
    assert decode_access_event("KeyIssued", encode_event(event)) == event
    with pytest.raises(MessageError):
        decode_access_event("KeyRevoked", encode_event(event))


def test_a_job_submitted_before_owners_existed_still_decodes() -> None:
    old = (
        b'{"type":"JobSubmitted","at":"2026-01-01T00:00:00Z","job_id":"j",'
        b'"spec":{"data_path":"d","model_path":"m","output_dir":"output/j"}}'
    )
    event = decode_event("JobSubmitted", old)
    assert isinstance(event, JobSubmitted) and event.spec.owner is None
    owned = msgspec.structs.replace(event.spec, owner="alice")
    assert isinstance(owned, JobSpec) and owned.owner == "alice"
