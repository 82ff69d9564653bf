"""``swift-trainer runner``'s options."""

from __future__ import annotations

import argparse

import pytest

from swift_trainer.cli.runner import add_runner_arguments, options_from_args
from swift_trainer.core.settings import Settings
from swift_trainer.runner import factory
from swift_trainer.runner.factory import SIMULATOR


def test_runner_options_default_from_the_host_and_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(factory.socket, "gethostname", lambda: "gpu.host_1.example")
    parser = argparse.ArgumentParser()
    add_runner_arguments(parser)
    settings = Settings(data_dir="/var/st", output_root="/data/out")
    options = options_from_args(settings, parser.parse_args(["--simulate-gpus", "2"]))
    assert options.runner_id == "gpu-host_1-example"
    assert options.swift_executable == SIMULATOR
    assert options.state_dir == "/var/st/runner-gpu-host_1-example"
    assert options.output_root == "/data/out"
    assert options.simulate_gpus == 2
    real = options_from_args(settings, parser.parse_args(["--runner-id", "h1"]))
    assert real.swift_executable == ("swift",)
    assert real.simulate_gpus is None
    assert not real.stop_jobs_on_exit
    custom = options_from_args(
        settings, parser.parse_args(["--swift-executable", "/opt/venv/bin/swift"])
    )
    assert custom.swift_executable == ("/opt/venv/bin/swift",)
