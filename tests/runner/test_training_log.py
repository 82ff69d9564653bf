"""Parsing ms-swift's logging.jsonl and watching checkpoint folders."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from swift_trainer.runner.training_log import (
    CheckpointWatcher,
    ProgressThrottle,
    TrainingLogReader,
    TrainingProgress,
    TrainingSummary,
    latest_checkpoint,
    list_checkpoints,
    merge_progress,
    parse_duration,
    parse_log_record,
)

# Lines as ms-swift 4.x writes them (key names and value formats from add_train_message).
TRAIN_LINE = {
    "loss": 1.47077751,
    "grad_norm": 10.5625,
    "learning_rate": 2e-06,
    "token_acc": 0.65511727,
    "epoch": 0.01,
    "global_step/max_steps": "1/94",
    "percentage": "1.06%",
    "elapsed_time": "2s",
    "remaining_time": "4m 28s",
    "memory(GiB)": 4.87,
    "train_speed(iter/s)": 0.345807,
}
EVAL_LINE = {
    "eval_loss": 1.2,
    "eval_token_acc": 0.7,
    "eval_runtime": 3.1,
    "epoch": 0.5,
    "global_step/max_steps": "50/94",
    "percentage": "53.19%",
    "elapsed_time": "1h 2m 3s",
    "remaining_time": "1d 0h 0m 5s",
}
SUMMARY_LINE = {
    "train_runtime": 200.5,
    "train_samples_per_second": 3.2,
    "train_steps_per_second": 0.47,
    "total_flos": 1.0e15,
    "train_loss": 1.1,
    "epoch": 1.0,
    "global_step/max_steps": "94/94",
    "percentage": "100.00%",
    "elapsed_time": "3m 20s",
    "remaining_time": "0s",
}


def dump(data: dict[str, object]) -> bytes:
    return (json.dumps(data) + "\n").encode()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("34s", 34.0),
        ("4m 28s", 268.0),
        ("1h 2m 3s", 3723.0),
        ("1d 2h 3m 4s", 93784.0),
        ("0:01:02", 62.0),
        ("01:02", 62.0),
        ("1 day, 2:03:04", 93784.0),
        ("12.5", 12.5),
        (7, 7.0),
        ("", None),
        ("soon", None),
        ("3 parsecs", None),
        (None, None),
        (True, None),
        (float("nan"), None),
    ],
)
def test_parse_duration(text: object, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_train_line_maps_to_progress() -> None:
    record = parse_log_record(TRAIN_LINE)
    assert record == TrainingProgress(
        step=1,
        max_steps=94,
        epoch=0.01,
        loss=1.47077751,
        learning_rate=2e-06,
        grad_norm=10.5625,
        elapsed_s=2.0,
        remaining_s=268.0,
        memory_gib=4.87,
        train_speed=0.345807,
    )


def test_tokens_seen_are_read_where_the_trainer_logs_them() -> None:
    record = parse_log_record({**TRAIN_LINE, "num_input_tokens_seen": 12345})
    assert isinstance(record, TrainingProgress)
    assert record.tokens_seen == 12345
    assert parse_log_record({**TRAIN_LINE, "num_input_tokens_seen": "many"}) == parse_log_record(
        TRAIN_LINE
    )


def test_eval_line_and_seconds_per_iteration() -> None:
    record = parse_log_record({**EVAL_LINE, "train_speed(s/it)": 4.0})
    assert isinstance(record, TrainingProgress)
    assert record.eval_loss == 1.2
    assert record.loss is None
    assert record.elapsed_s == 3723.0
    assert record.remaining_s == 86405.0
    assert record.train_speed == 0.25


def test_summary_line_is_detected() -> None:
    record = parse_log_record(SUMMARY_LINE)
    assert isinstance(record, TrainingSummary)
    assert record.reached_final_step
    assert record.train_runtime_s == 200.5
    assert record.train_loss == 1.1
    early = parse_log_record({**SUMMARY_LINE, "global_step/max_steps": "40/94"})
    assert isinstance(early, TrainingSummary)
    assert not early.reached_final_step


def test_lines_without_meaning_are_ignored() -> None:
    assert parse_log_record({"note": "hello"}) is None
    assert parse_log_record([1, 2]) is None
    assert parse_log_record({"global_step/max_steps": "x/10"}) is None
    bad_max = parse_log_record({"global_step/max_steps": "3/?", "loss": "1.0"})
    assert bad_max == TrainingProgress(step=3)


def test_reader_handles_missing_file_partial_lines_and_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "logging.jsonl"
    reader = TrainingLogReader(path)
    assert reader.poll() == []  # not written yet

    line = dump(TRAIN_LINE)
    path.write_bytes(line[:30])  # swift is mid-write
    assert reader.poll() == []
    with path.open("ab") as handle:
        handle.write(line[30:])
        handle.write(b"{not json\n")
        handle.write(b"[1, 2, 3]\n")
        handle.write(b"\xff\xfe garbage\n")
        handle.write(b"\n")
        handle.write(dump({**TRAIN_LINE, "global_step/max_steps": "5/94", "loss": float("nan")}))
    records = reader.poll()
    assert [r.step for r in records] == [1, 5]
    assert isinstance(records[1], TrainingProgress)
    assert records[1].loss is None  # NaN is "unknown", never a float that breaks JSON
    assert reader.malformed_lines == 3
    assert reader.last_malformed is not None
    assert reader.last_step == 5
    assert reader.max_steps == 94
    assert not reader.reached_final_step


def test_reader_finish_accepts_an_unterminated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "logging.jsonl"
    path.write_bytes(dump(TRAIN_LINE) + json.dumps(SUMMARY_LINE).encode())
    reader = TrainingLogReader(path)
    assert len(reader.poll()) == 1
    assert reader.summary is None
    records = reader.finish()
    assert isinstance(records[0], TrainingSummary)
    assert reader.summary is not None
    assert reader.reached_final_step


def test_reader_skips_an_earlier_attempts_lines(tmp_path: Path) -> None:
    path = tmp_path / "logging.jsonl"
    path.write_bytes(dump(TRAIN_LINE) + dump(SUMMARY_LINE))
    reader = TrainingLogReader(path, start_offset=path.stat().st_size)
    assert reader.poll() == []
    assert reader.summary is None
    with path.open("ab") as handle:
        handle.write(dump({**TRAIN_LINE, "global_step/max_steps": "60/94"}))
    assert [r.step for r in reader.poll()] == [60]


def test_reader_restarts_on_truncation_and_recreation(tmp_path: Path) -> None:
    path = tmp_path / "logging.jsonl"
    path.write_bytes(dump(TRAIN_LINE) * 3)
    reader = TrainingLogReader(path)
    assert len(reader.poll()) == 3
    path.write_bytes(dump(TRAIN_LINE))  # truncated and rewritten
    assert len(reader.poll()) == 1
    # Recreated (a new inode: written beside it, then renamed over it) and longer than
    # before: every line of the new file is read, the first one included.
    steps = [dict(TRAIN_LINE, **{"global_step/max_steps": f"{n}/94"}) for n in range(1, 6)]
    replacement = tmp_path / "replacement.jsonl"
    replacement.write_bytes(b"".join(dump(line) for line in steps))
    replacement.replace(path)
    records = reader.poll()
    assert [r.step for r in records if isinstance(r, TrainingProgress)] == [1, 2, 3, 4, 5]


def test_throttle_holds_back_but_never_drops_the_last() -> None:
    now = [0.0]
    throttle = ProgressThrottle(5.0, clock=lambda: now[0])
    first, second, third = (TrainingProgress(step=s) for s in (1, 2, 3))
    assert throttle.offer(first) == first
    now[0] = 1.0
    assert throttle.offer(second) is None
    assert throttle.offer(third) is None
    assert throttle.due() is None
    now[0] = 6.0
    assert throttle.due() == third  # the newest pending one, after the interval
    assert throttle.due() is None
    now[0] = 7.0
    assert throttle.offer(TrainingProgress(step=4)) is None
    assert throttle.flush() == TrainingProgress(step=4)  # the job ends: out it goes
    assert throttle.flush() is None


def test_throttle_keeps_every_held_back_step_as_a_sample() -> None:
    now = [0.0]
    throttle = ProgressThrottle(5.0, clock=lambda: now[0])
    assert throttle.offer(TrainingProgress(step=1, loss=3.0)) is not None
    assert throttle.take_earlier() == ()
    now[0] = 1.0
    for step in (2, 3, 4):
        assert throttle.offer(TrainingProgress(step=step, loss=3.0 - step / 10)) is None
    # An evaluation at the same step merges into it rather than adding a sample.
    assert throttle.offer(TrainingProgress(step=4, loss=2.6, eval_loss=2.9)) is None
    now[0] = 6.0
    assert throttle.due() == TrainingProgress(step=4, loss=2.6, eval_loss=2.9)
    assert [(x.step, x.loss) for x in throttle.take_earlier()] == [(2, 2.8), (3, 2.7)]
    assert throttle.take_earlier() == ()


def test_merge_progress_keeps_the_newest_value_of_each_field() -> None:
    train = TrainingProgress(step=50, max_steps=94, loss=1.0, learning_rate=1e-4)
    evaluation = TrainingProgress(step=50, max_steps=94, eval_loss=1.3)
    merged = merge_progress(train, evaluation)
    assert merged.loss == 1.0
    assert merged.eval_loss == 1.3
    later = merge_progress(merged, TrainingProgress(step=55, loss=0.9))
    assert (later.step, later.loss, later.eval_loss, later.max_steps) == (55, 0.9, 1.3, 94)
    assert merge_progress(later, TrainingProgress(step=3)) == TrainingProgress(step=3)
    assert merge_progress(None, train) == train


def test_checkpoints_are_reported_once_and_only_when_complete(tmp_path: Path) -> None:
    watcher = CheckpointWatcher(tmp_path)
    assert watcher.scan() == []
    (tmp_path / "checkpoint-100").mkdir()
    (tmp_path / "checkpoint-100" / "adapter_model.safetensors").write_bytes(b"x")
    (tmp_path / "checkpoint-foo").mkdir()
    (tmp_path / "checkpoint-7.tmp").mkdir()
    (tmp_path / "logging.jsonl").write_text("")
    assert watcher.scan() == []  # still being written: no trainer_state.json yet
    (tmp_path / "checkpoint-100" / "trainer_state.json").write_text("{}")
    new = watcher.scan()
    assert [(c.step, Path(c.path).name) for c in new] == [(100, "checkpoint-100")]
    assert watcher.scan() == []
    for step in (20, 300):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert [c.step for c in watcher.scan()] == [20, 300]
    assert [c.step for c in list_checkpoints(tmp_path)] == [20, 100, 300]
    latest = latest_checkpoint(tmp_path)
    assert latest is not None
    assert latest.step == 300
    known = CheckpointWatcher(tmp_path, known=[str(tmp_path / "checkpoint-20")])
    assert [c.step for c in known.scan()] == [100, 300]
    assert latest_checkpoint(tmp_path / "missing") is None


def test_nan_is_not_a_number_for_us() -> None:
    record = parse_log_record({**TRAIN_LINE, "grad_norm": math.inf, "memory(GiB)": True})
    assert isinstance(record, TrainingProgress)
    assert record.grad_norm is None
    assert record.memory_gib is None


def test_progress_maps_one_to_one_onto_the_core_report() -> None:
    """The NATS shell turns a progress into ``ReportProgress`` without renaming a field."""
    import msgspec

    from swift_trainer.core.commands import ReportProgress

    progress = parse_log_record({**TRAIN_LINE, "eval_loss": 0.5})
    assert isinstance(progress, TrainingProgress)
    report = ReportProgress(
        job_id="job-1",
        attempt=1,
        runner_id="gpu-host-1",
        **msgspec.structs.asdict(progress),
    )
    assert (report.step, report.max_steps, report.remaining_s, report.eval_loss) == (
        1,
        94,
        268.0,
        0.5,
    )


def test_the_watcher_reports_a_removed_checkpoint_once(tmp_path: Path) -> None:
    def complete(step: int) -> Path:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text("{}")
        return folder

    watcher = CheckpointWatcher(tmp_path)
    first, second = complete(10), complete(20)
    assert [c.step for c in watcher.scan()] == [10, 20]
    assert watcher.removed() == []
    shutil.rmtree(first)  # save_total_limit rotated it out
    (second / "trainer_state.json").unlink()  # or it was taken apart by hand
    assert watcher.removed() == [str(first), str(second)]
    assert watcher.removed() == []
