"""Events on the wire: round trips, schema evolution, upcasters and malformed payloads."""

from __future__ import annotations

import contextlib
import types
import typing
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swift_trainer.core import events as e
from swift_trainer.core.errors import MessageError, UnknownMessageType
from swift_trainer.core.failure import FAILURE_KINDS, Failure
from swift_trainer.core.gang import RankPlacement
from swift_trainer.core.spec import JobSpec, TrainArgs

AT = datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
SPEC = JobSpec(
    data_path="AI-ModelScope/coco#20000",
    model_path="Qwen/Qwen2.5-VL-7B-Instruct",
    output_dir="output/training_001",
    priority=9,
    gpu_count=2,
    train_args=TrainArgs(learning_rate=2e-5, target_modules=("q_proj", "v_proj")),
    labels={"team": "vision"},
)
J: dict[str, Any] = {"at": AT, "job_id": "training_001"}

#: One instance of every event type, with every optional field set to something.
SAMPLES: list[e.Event] = [
    e.JobSubmitted(**J, spec=SPEC),
    e.JobHeld(**J),
    e.JobWaiting(**J),
    e.JobReleased(**J),
    e.JobQueued(**J, priority=3, reason="resumed", resume_from="out/checkpoint-100"),
    e.JobPriorityChanged(**J, old_priority=3, new_priority=8),
    e.JobScheduled(
        **J,
        attempt=2,
        runner_id="gpu-host-1",
        gpu_ids=(0, 3),
        gpu_uuids=("GPU-a", "GPU-b"),
        resume_from="out/checkpoint-100",
        peers=(RankPlacement(rank=1, runner_id="gpu-host-2", gpu_ids=(0, 1)),),
    ),
    e.RankStartRequested(
        **J,
        attempt=2,
        rank=1,
        runner_id="gpu-host-2",
        gpu_ids=(0, 1),
        master_addr="10.0.0.1",
        master_port=29500,
    ),
    e.RankStarted(**J, attempt=2, rank=1, runner_id="gpu-host-2", pid=77),
    e.JobStarted(**J, attempt=2, runner_id="gpu-host-1", pid=4242, command=("swift", "sft")),
    e.JobProgressed(
        **J,
        attempt=2,
        step=10,
        max_steps=1000,
        epoch=0.01,
        loss=1.2345678901234567,
        learning_rate=1e-4,
        grad_norm=0.5,
        elapsed_s=30.5,
        remaining_s=3000.25,
        memory_gib=21.5,
        train_speed=0.33,
        eval_loss=1.5,
    ),
    e.CheckpointSaved(**J, attempt=2, step=100, path="out/checkpoint-100"),
    e.CheckpointRemoved(**J, attempt=2, path="out/checkpoint-100", reason="no longer on disk"),
    e.JobWarned(**J, attempt=2, warning="resume_stalled", reason="no step in 600 s"),
    e.RunnerDrained(at=AT, runner_id="gpu-host-1", reason="reboot", stop_jobs=True),
    e.RunnerUndrained(at=AT, runner_id="gpu-host-1", reason="back"),
    e.GpuHealthChanged(
        at=AT,
        runner_id="gpu-host-1",
        gpu_uuid="GPU-1",
        gpu_index=1,
        healthy=False,
        reasons=("Xid 79",),
    ),
    e.JobSucceeded(**J, attempt=2, final_step=1000, output_path="out/v0"),
    e.JobFailed(**J, attempt=2, exit_code=-9, reason="killed", stderr_tail="Killed\n"),
    e.StopRequested(**J, reason="user", runner_id="gpu-host-1", attempt=2),
    e.StopRequested(**J, reason="user", runner_id="gpu-host-1", attempt=2, intent="pause"),
    e.JobPaused(**J, reason="paused by user", attempt=2, checkpoint="o/checkpoint-5"),
    e.JobCancelled(**J, reason="cancelled by user", attempt=2, checkpoint="o/checkpoint-5"),
    e.JobStopped(**J, reason="user", attempt=2, checkpoint="out/checkpoint-100"),
    e.JobLost(**J, attempt=2, runner_id="gpu-host-1", reason="lease expired"),
    e.StopRequested(
        **J,
        reason="preempted by urgent (priority 9 > 2) on host gpu-host-1",
        runner_id="gpu-host-1",
        attempt=2,
        intent="preempt",
        grace_s=120.0,
        preempted_by="urgent",
        reserved_gpu_ids=(0, 1),
    ),
    e.JobPreempted(**J, attempt=2, reason="preempted", preempted_by="urgent", checkpoint="c"),
    e.JobTimedOut(**J, attempt=2, reason="reached max_runtime 5s", checkpoint="c"),
    e.JobRequeued(**J, priority=3, retries=1, reason="lost", resume_from="out/checkpoint-100"),
    e.AssignmentRejected(**J, attempt=2, runner_id="gpu-host-1", reason="gpu busy"),
    e.ExportRequested(
        **J, export_id="x-1", checkpoint="out/checkpoint-100", runner_id="h", overwrite=True
    ),
    e.ExportStarted(**J, export_id="x-1", runner_id="h", pid=7, command=("swift", "export")),
    e.ExportSucceeded(**J, export_id="x-1", artifact_path="out/merged"),
    e.ExportFailed(**J, export_id="x-1", exit_code=None, reason="disk full"),
    e.JobDeleted(**J),
    e.QueueProcessorPaused(at=AT, reason="maintenance"),
    e.QueueProcessorResumed(at=AT),
    e.GpusClaimed(**J, attempt=2, runner_id="gpu-host-1", gpu_ids=(0, 3)),
    e.GpusReleased(**J, attempt=2, runner_id="gpu-host-1", gpu_ids=(0, 3), reason="succeeded"),
]


def test_samples_cover_every_event_type() -> None:
    assert {type(x) for x in SAMPLES} == set(e.EVENT_TYPES.values())
    assert set(e.EVENT_TYPES) == {cls.__name__ for cls in e.EVENT_TYPES.values()}


@pytest.mark.parametrize("event", SAMPLES, ids=lambda x: type(x).__name__)
def test_every_event_round_trips(event: e.Event) -> None:
    payload = e.encode_event(event)
    assert msgspec.json.decode(payload)["type"] == e.event_type(event) == type(event).__name__
    decoded = e.decode_event(e.event_type(event), payload)
    assert decoded == event
    assert type(decoded) is type(event)
    assert type(event).schema_version == 1


def test_defaults_are_left_out_of_the_payload() -> None:
    payload = msgspec.json.decode(e.encode_event(e.JobQueued(**J, priority=5)))
    assert payload == {
        "type": "JobQueued",
        "at": "2025-03-01T12:30:15.123456Z",
        "job_id": "training_001",
        "priority": 5,
    }


def test_timezones_survive_the_round_trip() -> None:
    at = datetime(2025, 3, 1, 12, tzinfo=timezone(timedelta(hours=8)))
    event = e.JobHeld(at=at, job_id="a")
    decoded = e.decode_event("JobHeld", e.encode_event(event))
    assert decoded.at == at
    assert decoded.at.utcoffset() == timedelta(hours=8)


# --- arbitrary values -----------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
specs = st.builds(
    JobSpec,
    data_path=st.text(min_size=1, max_size=20),
    model_path=st.text(min_size=1, max_size=20),
    output_dir=st.from_regex(r"[a-z0-9_]{1,8}(/[a-z0-9_]{1,8}){0,3}", fullmatch=True),
    priority=st.integers(0, 10),
    gpu_count=st.integers(1, 64),
    train_args=st.builds(
        TrainArgs,
        learning_rate=st.none() | st.floats(1e-8, 1),
        lora_rank=st.none() | st.integers(1, 512),
        target_modules=st.none() | st.lists(st.text(min_size=1, max_size=8)).map(tuple),
    ),
    auto_start=st.booleans(),
    labels=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=4),
)

failures = st.builds(
    Failure,
    kind=st.sampled_from(FAILURE_KINDS),
    detail=st.text(max_size=40),
    log_line=st.none() | st.text(max_size=40),
    gpus=st.lists(st.text(min_size=1, max_size=12), max_size=2).map(tuple),
)
train_args = st.builds(
    TrainArgs,
    batch_size=st.none() | st.integers(1, 64),
    gradient_accumulation_steps=st.none() | st.integers(1, 64),
)


def _strategy_for(annotation: Any) -> st.SearchStrategy[Any]:  # noqa: C901 - a table
    """A strategy for one field type of an event (what the wire format can carry)."""
    if annotation is datetime:
        return st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))]))
    if annotation is int:
        return INT64
    if annotation is float:
        # JSON has no NaN or infinity: msgspec writes them as null (see the test below).
        return st.floats(allow_nan=False, allow_infinity=False)
    if annotation is str:
        return st.text()
    if annotation is bool:
        return st.booleans()
    if annotation is JobSpec:
        return specs
    if annotation is Failure:
        return failures
    if annotation is TrainArgs:
        return train_args
    if annotation is RankPlacement:
        return st.builds(
            RankPlacement,
            rank=st.integers(1, 63),
            runner_id=st.text(),
            gpu_ids=st.lists(st.integers(0, 7), max_size=4).map(tuple),
            gpu_uuids=st.lists(st.text(), max_size=4).map(tuple),
        )
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        hints = typing.get_type_hints(annotation)
        fields = {name: _strategy_for(hints[name]) for name in annotation.__struct_fields__}
        return st.builds(annotation, **fields)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple:
        return st.lists(_strategy_for(args[0]), max_size=4).map(tuple)
    if origin is dict:
        return st.dictionaries(_strategy_for(args[0]), _strategy_for(args[1]), max_size=3)
    if origin is types.UnionType:
        return st.one_of([_strategy_for(arg) for arg in args])
    if annotation is type(None):
        return st.none()
    raise AssertionError(f"no strategy for {annotation!r}")


def _events(cls: type[e.Event]) -> st.SearchStrategy[e.Event]:
    hints = typing.get_type_hints(cls)
    fields = {name: _strategy_for(hints[name]) for name in cls.__struct_fields__}
    return st.builds(cls, **fields)


any_event = st.sampled_from(sorted(e.EVENT_TYPES.values(), key=lambda x: x.__name__)).flatmap(
    _events
)


@settings(max_examples=400, deadline=None)
@given(any_event)
def test_any_event_round_trips(event: e.Event) -> None:
    decoded = e.decode_event(e.event_type(event), e.encode_event(event))
    assert decoded == event
    assert msgspec.json.encode(decoded) == e.encode_event(event)


def test_nan_metrics_do_not_survive_the_wire() -> None:
    """A diverged run reports NaN loss; JSON cannot carry it, so it arrives as "unknown"."""
    event = e.JobProgressed(**J, attempt=1, step=3, loss=float("nan"))
    decoded = e.decode_event("JobProgressed", e.encode_event(event))
    assert isinstance(decoded, e.JobProgressed)
    assert decoded.loss is None


# --- schema evolution -----------------------------------------------------------------------


def test_a_job_scheduled_recorded_before_gpu_uuids_and_resume_from_still_decodes() -> None:
    old = b"""{"type": "JobScheduled", "at": "2024-11-02T08:00:00Z", "job_id": "training_001",
               "attempt": 1, "runner_id": "gpu-host-1", "gpu_ids": [0, 1]}"""
    event = e.decode_event("JobScheduled", old, 1)
    assert event == e.JobScheduled(
        at=datetime(2024, 11, 2, 8, tzinfo=UTC),
        job_id="training_001",
        attempt=1,
        runner_id="gpu-host-1",
        gpu_ids=(0, 1),
    )
    assert isinstance(event, e.JobScheduled)
    assert (event.gpu_uuids, event.resume_from, event.peers) == ((), None, ())


def test_a_ledger_claim_recorded_before_multi_node_jobs_decodes_with_no_peers() -> None:
    old = b"""{"type": "GpusClaimed", "at": "2024-11-02T08:00:00Z", "job_id": "training_001",
               "attempt": 1, "runner_id": "gpu-host-1", "gpu_ids": [0]}"""
    event = e.decode_event("GpusClaimed", old, 1)
    assert isinstance(event, e.GpusClaimed)
    assert event.peers == ()


def test_a_spec_recorded_before_nodes_and_host_labels_decodes_as_one_node_anywhere() -> None:
    old = b"""{"type": "JobSubmitted", "at": "2024-11-02T08:00:00Z", "job_id": "training_001",
               "spec": {"data_path": "d", "model_path": "m", "output_dir": "o"}}"""
    event = e.decode_event("JobSubmitted", old, 1)
    assert isinstance(event, e.JobSubmitted)
    assert (event.spec.nodes, event.spec.host_labels) == (1, {})


@pytest.mark.parametrize(
    ("type_name", "payload", "defaults"),
    [
        ("JobQueued", {"priority": 4}, {"reason": "submitted", "resume_from": None}),
        ("StopRequested", {"reason": "user"}, {"runner_id": None, "attempt": 0}),
        ("JobStopped", {"reason": "user"}, {"attempt": 0, "checkpoint": None}),
        ("JobFailed", {"attempt": 1, "exit_code": 1, "reason": "x"}, {"stderr_tail": ""}),
        ("ExportRequested", {"export_id": "x", "checkpoint": "c", "runner_id": "r"}, {}),
        ("QueueProcessorPaused", {}, {"reason": ""}),
        (
            "JobStarted",
            {"attempt": 1, "runner_id": "r", "pid": 7, "command": ["swift"]},
            {"warnings": (), "tracker_urls": {}},
        ),
    ],
)
def test_old_payloads_without_later_fields_decode_to_the_defaults(
    type_name: str, payload: dict[str, Any], defaults: dict[str, Any]
) -> None:
    data = {"type": type_name, "at": "2024-11-02T08:00:00Z", **payload}
    if type_name != "QueueProcessorPaused":
        data["job_id"] = "training_001"
    event = e.decode_event(type_name, msgspec.json.encode(data))
    assert type(event).__name__ == type_name
    for name, value in defaults.items():
        assert getattr(event, name) == value


def test_a_payload_from_a_newer_writer_with_extra_fields_still_decodes() -> None:
    newer = b"""{"type": "JobHeld", "at": "2025-01-01T00:00:00Z", "job_id": "a",
                 "held_by": "alice"}"""
    assert e.decode_event("JobHeld", newer) == e.JobHeld(
        at=datetime(2025, 1, 1, tzinfo=UTC), job_id="a"
    )


@pytest.fixture
def job_queued_v3(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, dict[str, Any]]]:
    """JobQueued at schema version 3, with upcasters from versions 1 and 2.

    v1 named the priority ``prio``; v2 stored the reason in upper case. Calls are logged.
    """
    calls: list[tuple[int, dict[str, Any]]] = []

    def from_v1(data: dict[str, Any]) -> dict[str, Any]:
        calls.append((1, dict(data)))
        data = dict(data)
        if "prio" in data:
            data["priority"] = data.pop("prio")
        return data

    def from_v2(data: dict[str, Any]) -> dict[str, Any]:
        calls.append((2, dict(data)))
        return {**data, "reason": str(data.get("reason", "submitted")).lower()}

    monkeypatch.setattr(e.JobQueued, "schema_version", 3)
    monkeypatch.setitem(e.UPCASTERS, ("JobQueued", 1), from_v1)
    monkeypatch.setitem(e.UPCASTERS, ("JobQueued", 2), from_v2)
    return calls


def test_upcasters_rewrite_an_old_payload_in_version_order(
    job_queued_v3: list[tuple[int, dict[str, Any]]],
) -> None:
    v1 = b"""{"type": "JobQueued", "at": "2024-01-01T00:00:00Z", "job_id": "a", "prio": 7,
             "reason": "REQUEUED"}"""
    event = e.decode_event("JobQueued", v1, 1)
    assert event == e.JobQueued(
        at=datetime(2024, 1, 1, tzinfo=UTC), job_id="a", priority=7, reason="requeued"
    )
    assert [version for version, _ in job_queued_v3] == [1, 2]
    assert "prio" in job_queued_v3[0][1]
    assert job_queued_v3[1][1]["priority"] == 7, "v2's upcaster sees v1's output"


def test_only_the_upcasters_from_the_recorded_version_on_are_applied(
    job_queued_v3: list[tuple[int, dict[str, Any]]],
) -> None:
    v2 = b"""{"type": "JobQueued", "at": "2024-01-01T00:00:00Z", "job_id": "a", "priority": 2,
             "reason": "RELEASED"}"""
    event = e.decode_event("JobQueued", v2, 2)
    assert isinstance(event, e.JobQueued)
    assert (event.priority, event.reason) == (2, "released")
    assert [version for version, _ in job_queued_v3] == [2]


def test_a_current_payload_is_not_upcast(job_queued_v3: list[tuple[int, dict[str, Any]]]) -> None:
    v3 = e.encode_event(e.JobQueued(at=AT, job_id="a", priority=1, reason="RAW"))
    event = e.decode_event("JobQueued", v3, 3)
    assert isinstance(event, e.JobQueued)
    assert event.reason == "RAW"
    assert job_queued_v3 == []


def test_an_old_payload_without_its_type_tag_is_tagged_before_decoding(
    job_queued_v3: list[tuple[int, dict[str, Any]]],
) -> None:
    untagged = b'{"at": "2024-01-01T00:00:00Z", "job_id": "a", "prio": 1}'
    event = e.decode_event("JobQueued", untagged, 1)
    assert isinstance(event, e.JobQueued)
    assert event.priority == 1


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[]", b'"JobQueued"', b'{"at": "2024-01-01T00:00:00Z", "job_id": "a"}'],
)
def test_a_malformed_old_payload_is_a_message_error(
    job_queued_v3: list[tuple[int, dict[str, Any]]], payload: bytes
) -> None:
    """Regression: a non-object old payload raised TypeError instead of MessageError."""
    with pytest.raises(MessageError) as info:
        e.decode_event("JobQueued", payload, 1)
    assert info.value.code == "malformed_message"
    assert "JobQueued v1" in info.value.message


# --- refusals -------------------------------------------------------------------------------


def test_an_unknown_event_type_is_refused() -> None:
    with pytest.raises(UnknownMessageType) as info:
        e.decode_event("JobTeleported", b"{}")
    assert info.value.code == "unknown_message_type"
    assert "JobTeleported" in info.value.message
    assert isinstance(info.value, MessageError)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{",
        b"\xff\xfe",
        b"[]",
        b'{"type": "JobQueued", "at": "yesterday", "job_id": "a", "priority": 1}',
        b'{"type": "JobQueued", "at": "2024-01-01T00:00:00Z", "job_id": "a"}',
        b'{"type": "JobQueued", "at": "2024-01-01T00:00:00Z", "job_id": 7, "priority": 1}',
        b'{"type": "JobHeld", "at": "2024-01-01T00:00:00Z", "job_id": "a", "priority": 1}',
    ],
)
def test_a_malformed_payload_is_a_message_error(payload: bytes) -> None:
    with pytest.raises(MessageError) as info:
        e.decode_event("JobQueued", payload)
    assert type(info.value) is MessageError
    assert info.value.code == "malformed_message"


def test_a_submitted_spec_that_breaks_its_own_rules_is_a_message_error() -> None:
    """Regression: JobSpec's InvalidSpec escaped decode_event, so a projection that skips
    MessageError would have crashed on it."""
    payload = msgspec.json.encode(
        {
            "type": "JobSubmitted",
            "at": "2024-01-01T00:00:00Z",
            "job_id": "a",
            "spec": {"data_path": "d", "model_path": "m", "output_dir": "/etc"},
        }
    )
    with pytest.raises(MessageError) as info:
        e.decode_event("JobSubmitted", payload)
    assert "output_dir" in info.value.message


@settings(max_examples=300, deadline=None)
@given(
    type_name=st.sampled_from(sorted(e.EVENT_TYPES)),
    payload=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["type", "at", "job_id", "priority", "spec", "attempt", "x"]),
                    inner,
                    max_size=6,
                )
            ),
            max_leaves=12,
        ).map(msgspec.json.encode),
    ),
    schema_version=st.integers(0, 2),
)
def test_decoding_garbage_raises_only_our_errors(
    type_name: str, payload: bytes, schema_version: int
) -> None:
    with contextlib.suppress(MessageError):  # anything else (InvalidSpec too) fails the test
        e.decode_event(type_name, payload, schema_version)


def test_a_stop_requested_recorded_before_intents_still_decodes_as_a_plain_stop() -> None:
    old = b"""{"type": "StopRequested", "at": "2024-11-02T08:00:00Z", "job_id": "training_001",
               "reason": "user", "runner_id": "gpu-host-1", "attempt": 1}"""
    event = e.decode_event("StopRequested", old, 1)
    assert isinstance(event, e.StopRequested)
    assert event.intent == "stop"


def test_a_spec_recorded_before_uploaded_files_still_decodes() -> None:
    old = b"""{"type": "JobSubmitted", "at": "2024-11-02T08:00:00Z", "job_id": "t1",
               "spec": {"data_path": "d#10", "model_path": "m", "output_dir": "out/t1"}}"""
    event = e.decode_event("JobSubmitted", old, 1)
    assert isinstance(event, e.JobSubmitted)
    spec = event.spec
    assert (spec.training_file, spec.validation_file, spec.method) == (None, None, "supervised")
    assert (spec.auto_export, spec.metadata, spec.suffix) == (False, {}, None)


def test_a_spec_naming_an_uploaded_file_round_trips() -> None:
    spec = JobSpec(
        model_path="m",
        output_dir="out/ft",
        training_file="file-abc123",
        validation_file="file-def456",
        method="dpo",
        dpo_beta=0.2,
        auto_export=True,
        suffix="mine",
        metadata={"team": "nlp"},
    )
    event = e.JobSubmitted(**J, spec=spec)
    assert e.decode_event("JobSubmitted", e.encode_event(event)) == event
    assert "data_path" not in msgspec.json.decode(e.encode_event(event))["spec"]


def test_a_stop_requested_recorded_before_preemption_decodes_with_no_grace_or_preemptor() -> None:
    old = b"""{"type": "StopRequested", "at": "2024-11-02T08:00:00Z", "job_id": "training_001",
    "reason": "user", "runner_id": "gpu-host-1", "attempt": 2, "intent": "pause"}"""
    event = e.decode_event("StopRequested", old, 1)
    assert isinstance(event, e.StopRequested)
    assert (event.grace_s, event.preempted_by, event.reserved_gpu_ids) == (None, None, ())


def test_a_spec_recorded_before_preemption_and_time_limits_is_preemptible_without_a_limit() -> None:
    old = b"""{"type": "JobSubmitted", "at": "2024-11-02T08:00:00Z", "job_id": "training_001",
    "spec": {"data_path": "d", "model_path": "m", "output_dir": "o"}}"""
    event = e.decode_event("JobSubmitted", old, 1)
    assert isinstance(event, e.JobSubmitted)
    assert event.spec.preemptible is True
    assert (event.spec.preempt_grace_s, event.spec.max_runtime_s) == (None, None)
