"""Fixtures of the runner tests (helpers live in ``runner_helpers``)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

TEST_SESSION = uuid.uuid4().hex


@pytest.fixture
def sim_env(tmp_path: Path) -> dict[str, str]:
    """Environment for simulated runs: fast steps, no GPU variables leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFT_SIM_")}
    env.pop("NPROC_PER_NODE", None)
    env["SWIFT_SIM_STEP_SECONDS"] = "0.03"
    # marks the processes of this test session, for the stray-process check
    env["SWIFT_TRAINER_TEST_SESSION"] = TEST_SESSION
    return env
