"""Commands on the wire: round trips, and every way a command can be malformed."""

from __future__ import annotations

import contextlib
import typing
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swift_trainer.core import commands as c
from swift_trainer.core.errors import (
    InvalidSpec,
    MessageError,
    UnknownMessageType,
)
from swift_trainer.core.ids import JOB_ID_PATTERN, is_valid_job_id
from swift_trainer.core.spec import JobSpec, TrainArgs
from swift_trainer.core.sweep_space import EarlyStop, Parameter, SweepSpec

JOB = "training_001"
SPEC = JobSpec(
    data_path="AI-ModelScope/coco#20000",
    model_path="Qwen/Qwen2.5-VL-7B-Instruct",
    output_dir="output/training_001",
    priority=9,
    gpu_count=2,
    min_gpu_memory_gb=40,
    gpu_name="H100",
    train_args=TrainArgs(num_epochs=3, lora_rank=8, target_modules=("all-linear",)),
    auto_start=False,
    max_retries=4,
    labels={"team": "vision"},
)
R: dict[str, Any] = {"job_id": JOB, "attempt": 2, "runner_id": "gpu-host-1"}

#: One instance of every command type, with optional fields set.
SAMPLES: list[c.AnyCommand] = [
    c.SubmitJob(job_id=JOB, spec=SPEC),
    c.StartJob(job_id=JOB),
    c.StopJob(job_id=JOB, reason="wrong dataset"),
    c.PauseJob(job_id=JOB, reason="free the GPUs for a while"),
    c.ResumeJob(job_id=JOB),
    c.CancelJob(job_id=JOB, reason="wrong model"),
    c.ChangePriority(job_id=JOB, priority=10),
    c.ReleaseWaitingJob(job_id=JOB, reason="dependencies met"),
    c.CreateSweep(
        sweep_id="lr-sweep",
        spec=SweepSpec(
            name="lr",
            base=SPEC,
            parameters={"train_args.learning_rate": Parameter(min=1e-6, max=1e-3)},
            method="random",
            count=8,
            max_parallel=2,
            early_stop=EarlyStop(min_steps=50),
        ),
    ),
    c.BeginTrial(sweep_id="lr-sweep", index=0),
    c.EndTrial(sweep_id="lr-sweep", index=0, outcome="early_stopped", metric=0.5),
    c.StopSweep(sweep_id="lr-sweep", intent="cancel", reason="enough"),
    c.RequestExport(job_id=JOB, checkpoint="checkpoint-100", overwrite=True),
    c.DeleteJob(job_id=JOB),
    c.ScheduleJob(
        job_id=JOB, attempt=2, runner_id="gpu-host-1", gpu_ids=(0, 1), gpu_uuids=("a", "b")
    ),
    c.MarkLost(job_id=JOB, attempt=2, reason="heartbeat missed"),
    c.PreemptJob(
        job_id=JOB, attempt=2, preempted_by="urgent", reason="preempted by urgent", grace_s=120.0
    ),
    c.TimeOutJob(job_id=JOB, attempt=2, reason="reached its max_runtime"),
    c.ReportStarted(**R, pid=4242, command=("swift", "sft", "--num_train_epochs", "3")),
    c.RejectAssignment(**R, reason="GPU 1 busy"),
    c.ReportProgress(
        **R,
        step=5,
        max_steps=100,
        epoch=0.05,
        loss=2.5,
        learning_rate=1e-4,
        grad_norm=1.0,
        elapsed_s=10.0,
        remaining_s=190.0,
        memory_gib=30.5,
        train_speed=0.5,
        eval_loss=2.0,
    ),
    c.ReportCheckpoint(**R, step=100, path="output/training_001/v0/checkpoint-100"),
    c.ReportCheckpointsRemoved(**R, paths=("output/training_001/v0/checkpoint-100",)),
    c.ReportSucceeded(**R, final_step=100, output_path="output/training_001/v0"),
    c.ReportFailed(**R, exit_code=137, reason="killed", stderr_tail="Killed"),
    c.ReportStopped(**R, checkpoint="output/training_001/v0/checkpoint-100"),
    c.ReportRendezvous(**R, master_addr="10.0.0.1", master_port=29500),
    c.ReportExportStarted(job_id=JOB, export_id="e-1", runner_id="h", pid=5, command=("x",)),
    c.ReportExportSucceeded(job_id=JOB, export_id="e-1", runner_id="h", artifact_path="m"),
    c.ReportExportFailed(job_id=JOB, export_id="e-1", runner_id="h", exit_code=None, reason="x"),
    c.PauseQueueProcessor(reason="maintenance"),
    c.ResumeQueueProcessor(),
    c.ClaimGpus(job_id=JOB, attempt=2, runner_id="gpu-host-1", gpu_ids=(0, 1)),
    c.ReleaseGpus(job_id=JOB, attempt=2, reason="job succeeded"),
    c.IssueKey(key_id="key-1", owner="alice", role="user", secret_sha256="0" * 64),
    c.RevokeKey(key_id="key-1", reason="left the team"),
    c.SetQuota(owner="alice", max_gpus=4, max_queued_jobs=10),
    c.RequeueJob(job_id=JOB, reason="runner gpu-host-1 drained: reboot"),
    c.FlagJob(job_id=JOB, attempt=2, warning="idle", reason="idle for 1800 s"),
    c.DrainRunner(runner_id="gpu-host-1", reason="reboot", stop_jobs=True),
    c.UndrainRunner(runner_id="gpu-host-1"),
    c.RecordGpuHealth(runner_id="gpu-host-1", gpu_uuid="GPU-1", gpu_index=1, reasons=("Xid 79",)),
]
COMMAND_NAMES = sorted(type(x).__name__ for x in SAMPLES)


def test_samples_cover_every_command_type() -> None:
    assert {type(x) for x in SAMPLES} == set(c.AnyCommand.__args__)
    assert set(c.AnyJobCommand.__args__) | set(c.ProcessorCommand.__args__) | set(
        c.LedgerCommand.__args__
    ) | set(c.AnyAccessCommand.__args__) | set(c.AnySweepCommand.__args__) | set(
        c.FleetCommand.__args__
    ) == set(c.AnyCommand.__args__)


@pytest.mark.parametrize("command", SAMPLES, ids=lambda x: type(x).__name__)
def test_every_command_round_trips(command: c.AnyCommand) -> None:
    wire = c.encode_command(command)
    assert msgspec.json.decode(wire)["type"] == type(command).__name__
    decoded = c.decode_command(wire)
    assert decoded == command
    assert type(decoded) is type(command)
    assert c.decode_command(msgspec.json.encode(c.command_to_builtins(command))) == command
    assert type(command).schema_version == 1


def test_builtins_carry_the_type_tag() -> None:
    assert c.command_to_builtins(c.StopJob(job_id=JOB)) == {
        "type": "StopJob",
        "job_id": JOB,
        "reason": "stopped by user",
    }


def test_defaults_fill_in_what_a_client_leaves_out() -> None:
    command = c.decode_command(b'{"type": "RequestExport", "job_id": "a"}')
    assert command == c.RequestExport(job_id="a", checkpoint=None, overwrite=False)
    submit = c.decode_command(
        b'{"type": "SubmitJob", "job_id": "a",'
        b' "spec": {"data_path": "d", "model_path": "m", "output_dir": "o"}}'
    )
    assert isinstance(submit, c.SubmitJob)
    assert (submit.spec.priority, submit.spec.gpu_count, submit.spec.auto_start) == (5, 1, True)


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["LaunchMissiles", "submitjob", "JobSubmitted", "Command", ""])
def test_an_unknown_command_type_is_refused(name: str) -> None:
    with pytest.raises(UnknownMessageType) as info:
        c.decode_command(msgspec.json.encode({"type": name, "job_id": JOB}))
    assert info.value.code == "unknown_message_type"
    assert isinstance(info.value, MessageError)
    assert "unknown command type" in info.value.message


def _submit(**spec: Any) -> dict[str, Any]:
    base = {"data_path": "d", "model_path": "m", "output_dir": "o"}
    return {"type": "SubmitJob", "job_id": JOB, "spec": {**base, **spec}}


MALFORMED: list[tuple[str, bytes | dict[str, Any] | list[Any]]] = [
    ("empty", b""),
    ("not json", b"submit please"),
    ("truncated", b'{"type": "StartJob", "job_id": "a"'),
    ("not utf-8", b"\xff\xfe\x00"),
    ("array", [{"type": "StartJob", "job_id": "a"}]),
    ("string", b'"StartJob"'),
    ("no type", {"job_id": JOB}),
    ("type not a string", {"type": 3, "job_id": JOB}),
    ("no job id", {"type": "StartJob"}),
    ("job id not a string", {"type": "StartJob", "job_id": 7}),
    ("job id with a slash", {"type": "StartJob", "job_id": "a/b"}),
    ("job id with a space", {"type": "StartJob", "job_id": "a b"}),
    ("job id starting with -", {"type": "StartJob", "job_id": "-a"}),
    ("job id too long", {"type": "StartJob", "job_id": "a" * 65}),
    ("empty job id", {"type": "StartJob", "job_id": ""}),
    # Regression: Python's ``$`` matches before a final newline, so this one got through.
    ("job id with a trailing newline", {"type": "StartJob", "job_id": "a\n"}),
    ("unknown field", {"type": "StartJob", "job_id": JOB, "force": True}),
    ("priority too high", {"type": "ChangePriority", "job_id": JOB, "priority": 11}),
    ("priority negative", {"type": "ChangePriority", "job_id": JOB, "priority": -1}),
    ("priority a string", {"type": "ChangePriority", "job_id": JOB, "priority": "9"}),
    ("gpu ids not ints", {**R, "type": "ScheduleJob", "gpu_ids": ["0"]}),
    ("attempt a float", {**R, "type": "MarkLost", "attempt": 1.5}),
    ("reason too long", {"type": "StopJob", "job_id": JOB, "reason": "x" * 4097}),
    ("unknown spec field", _submit(learning_rate=1e-4)),
    ("unknown train arg", _submit(train_args={"learning_rte": 1e-4})),
    ("spec priority too high", _submit(priority=11)),
    ("spec gpu count zero", _submit(gpu_count=0)),
    ("bad train type", _submit(train_args={"train_type": "qlora"})),
    ("processor command with job id", {"type": "ResumeQueueProcessor", "job_id": JOB}),
]


@pytest.mark.parametrize(("case", "data"), MALFORMED, ids=[case for case, _ in MALFORMED])
def test_a_malformed_command_is_a_message_error(
    case: str, data: bytes | dict[str, Any] | list[Any]
) -> None:
    wire = data if isinstance(data, bytes) else msgspec.json.encode(data)
    with pytest.raises(MessageError) as info:
        c.decode_command(wire)
    assert type(info.value) is MessageError, case
    assert info.value.code == "malformed_message"
    assert info.value.message.startswith(("invalid command", "command is not valid JSON"))


def test_the_message_says_where_the_problem_is() -> None:
    with pytest.raises(MessageError) as info:
        c.decode_command(msgspec.json.encode(_submit(train_args={"lora_rank": 0})))
    assert "$.spec.train_args.lora_rank" in info.value.message


@pytest.mark.parametrize("output_dir", ["/etc", "../../home", "out\\x"])
def test_a_spec_that_breaks_its_own_rules_is_an_invalid_spec(output_dir: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        c.decode_command(msgspec.json.encode(_submit(output_dir=output_dir)))
    assert info.value.code == "invalid_spec"
    assert repr(output_dir) in info.value.message


def test_the_job_id_pattern_is_the_ids_module_one() -> None:
    _, meta = typing.get_args(c.JobId)
    assert meta.pattern == JOB_ID_PATTERN


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=70) | st.from_regex(JOB_ID_PATTERN).map(lambda x: x.rstrip("\n")))
def test_the_wire_accepts_exactly_the_valid_job_ids(job_id: str) -> None:
    wire = msgspec.json.encode({"type": "StartJob", "job_id": job_id})
    try:
        command = c.decode_command(wire)
    except MessageError:
        assert not is_valid_job_id(job_id)
    else:
        assert is_valid_job_id(job_id)
        assert command == c.StartJob(job_id=job_id)


# --- nothing else ever escapes --------------------------------------------------------------

FIELD_NAMES = sorted(
    {name for cls in c.AnyCommand.__args__ for name in cls.__struct_fields__} | {"x"}
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from([JOB, "a" * 70, "", "-x", "H100"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), inner, max_size=6)
    ),
    max_leaves=16,
)
command_like = st.builds(
    lambda name, body: {**body, "type": name},
    st.sampled_from([*COMMAND_NAMES, "Nope"]) | st.text(max_size=8),
    st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_arbitrary_bytes_raise_only_our_errors(data: bytes) -> None:
    with contextlib.suppress(MessageError, InvalidSpec):  # anything else fails the test
        c.decode_command(data)


@settings(max_examples=500, deadline=None)
@given(st.one_of(json_values, command_like))
def test_arbitrary_json_raises_only_our_errors(value: Any) -> None:
    try:
        command = c.decode_command(msgspec.json.encode(value))
    except (MessageError, InvalidSpec):  # anything else fails the test
        return
    # Whatever decodes is a well-formed command that encodes back to the same thing.
    assert c.decode_command(c.encode_command(command)) == command


@settings(max_examples=200, deadline=None)
@given(
    job_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True),
    priority=st.integers(0, 10),
    reason=st.text(max_size=100),
)
def test_valid_user_commands_round_trip(job_id: str, priority: int, reason: str) -> None:
    for command in (
        c.ChangePriority(job_id=job_id, priority=priority),
        c.StopJob(job_id=job_id, reason=reason),
    ):
        assert c.decode_command(c.encode_command(command)) == command
