"""The scheduler's command line: its options and their errors."""

from __future__ import annotations

import argparse

import pytest

from swift_trainer.cli.scheduler import add_scheduler_arguments
from swift_trainer.projections.scheduler.dormant_jobs import DEFAULT_LIMIT


def parser() -> argparse.ArgumentParser:
    made = argparse.ArgumentParser(prog="scheduler")
    add_scheduler_arguments(made)
    return made


def test_jobs_kept_at_rest_default_and_can_be_set() -> None:
    assert parser().parse_args([]).max_jobs_at_rest == DEFAULT_LIMIT
    assert parser().parse_args(["--max-jobs-at-rest", "0"]).max_jobs_at_rest == 0


@pytest.mark.parametrize(
    ("value", "message"), [("-1", "must be 0 or more, not -1"), ("x", "not a whole number: 'x'")]
)
def test_a_bad_count_is_a_usage_error(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["--max-jobs-at-rest", value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
