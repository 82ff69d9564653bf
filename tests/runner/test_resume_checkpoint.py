"""Choosing the checkpoint to resume from."""

from __future__ import annotations

from pathlib import Path

from swift_trainer.runner.host_checks import ResumePoint, resolve_resume


def test_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    """save_total_limit rotated the recorded checkpoint away while a lost attempt trained
    on: resume from the newest complete one instead of refusing the job forever."""
    out = tmp_path / "out"
    for step, complete in ((30, True), (35, True), (40, False)):
        folder = out / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (out / "checkpoint-35-merged").mkdir()
    assert resolve_resume(None) == ResumePoint(None)
    assert resolve_resume("checkpoint-5") == ResumePoint("checkpoint-5")
    assert resolve_resume(str(out / "checkpoint-30")) == ResumePoint(str(out / "checkpoint-30"))
    assert resolve_resume(str(out / "checkpoint-25")) == ResumePoint(str(out / "checkpoint-35"))
    missing = resolve_resume(str(tmp_path / "elsewhere" / "checkpoint-25"))
    assert missing.path is None
    assert missing.problem is not None
    assert "is not on this runner" in missing.problem
