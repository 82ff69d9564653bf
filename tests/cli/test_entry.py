"""The top-level command: grouped help, global options anywhere, old names kept working."""

from __future__ import annotations

import pytest

from swift_trainer.cli.entry import COMMAND_GROUPS, _parser, normalize_argv


def test_every_command_is_in_exactly_one_help_group() -> None:
    parser = _parser()
    commands = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    grouped = [name for names in COMMAND_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(commands)


def test_the_help_is_grouped_plain_text() -> None:
    text = _parser().format_help()
    for title in ("service processes:", "jobs (over the HTTP API", "administration:"):
        assert title in text
    assert "``" not in text
    assert "{" not in text  # no flat list of every command name
    assert text.index("  up ") < text.index("  jobs ") < text.index("  keys ")


@pytest.mark.parametrize(
    ("argv", "expected", "command"),
    [
        (["up", "--data-dir", "X"], ["--data-dir", "X", "up"], "up"),
        (["gpus", "--env-file=e.env"], ["--env-file=e.env", "gpus"], "gpus"),
        (["--data-dir", "X", "queue"], ["--data-dir", "X", "queue"], "queue"),
        (["jobs", "show", "a"], ["jobs", "show", "a"], "jobs"),
    ],
)
def test_global_options_are_accepted_after_the_command(
    argv: list[str], expected: list[str], command: str
) -> None:
    assert normalize_argv(argv) == expected
    assert _parser().parse_args(expected).command == command


def test_old_job_commands_run_under_operator_with_a_notice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = normalize_argv(["--data-dir", "X", "stop", "job-1", "--reason", "r"])
    assert argv == ["--data-dir", "X", "operator", "stop", "job-1", "--reason", "r"]
    args = _parser().parse_args(argv)
    assert (args.command, args.op, args.job_id, args.data_dir) == ("operator", "stop", "job-1", "X")
    err = capsys.readouterr().err
    assert "'swift-trainer stop' is deprecated" in err
    assert "swift-trainer jobs stop" in err
    assert normalize_argv(["jobs", "stop", "job-1"]) == ["jobs", "stop", "job-1"]
    assert "deprecated" not in capsys.readouterr().err
