"""Settings: where job output goes when nothing says otherwise."""

from __future__ import annotations

from pathlib import Path

from swift_trainer.core.settings import Settings, load_settings


def test_job_output_goes_under_the_data_dir_by_default() -> None:
    settings = load_settings({"SWIFT_TRAINER_DATA_DIR": "/srv/trainer"})
    assert Path(settings.output_root) == Path("/srv/trainer/output")


def test_the_default_data_dir_keeps_output_out_of_the_current_folder() -> None:
    assert Path(load_settings({}).output_root) == Path(".swift-trainer/output")
    assert Path(Settings().output_root) == Path(".swift-trainer/output")


def test_output_root_set_in_the_environment_wins() -> None:
    settings = load_settings({"SWIFT_TRAINER_DATA_DIR": "/srv/t", "OUTPUT_ROOT": "/data/out"})
    assert settings.output_root == "/data/out"
