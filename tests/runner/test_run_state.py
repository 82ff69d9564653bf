"""The run records a restarted runner reads back."""

from __future__ import annotations

import json
from pathlib import Path

from swift_trainer.runner.run_state import RunRecord, RunStateStore, state_file_name


def test_unreadable_state_files_are_set_aside(tmp_path: Path) -> None:
    store = RunStateStore(tmp_path)
    (tmp_path / "job_x-000.json").write_text("{not json")
    (tmp_path / "job_y-000.json").write_text(json.dumps({"kind": "job"}))
    assert store.load_all() == []
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".corrupt", ".corrupt"]


def test_a_saved_record_reads_back_and_leaves_no_temp_file(tmp_path: Path) -> None:
    store = RunStateStore(tmp_path)
    record = RunRecord(
        kind="export",
        job_id="j/1",
        export_id="e 1",
        pid=10,
        sid=10,
        create_time=1.5,
        argv=("swift", "export"),
        output_dir="/out",
        stdout_path="/out/o",
        stderr_path="/out/e",
        processes={11: 2.5},
    )
    store.save(record)
    store.save(record)
    assert store.load_all() == [record]
    assert [p.name for p in tmp_path.iterdir()] == [state_file_name("export:e 1")]
    store.delete(record.key)
    store.delete(record.key)
    assert list(tmp_path.iterdir()) == []


def test_state_file_names_are_safe_and_distinct() -> None:
    assert state_file_name("job:a/b") != state_file_name("job:a_b")
    assert "/" not in state_file_name("job:../../etc")
    assert state_file_name("job:x").endswith(".json")
