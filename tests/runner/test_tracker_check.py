"""Unreachable experiment trackers: found before a start, left out or offline, warned about."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.runner.runner_helpers import make_spec

from swift_trainer.bus.embedded import free_port
from swift_trainer.runner.swift_command import build_sft_command
from swift_trainer.runner.tracker_check import (
    remote_endpoints,
    unreachable_trackers,
    without_unreachable,
)


def invocation(tmp_path: Path, env: dict[str, str], *trackers: str):  # type: ignore[no-untyped-def]
    spec = make_spec(report_to=trackers)
    return build_sft_command(spec, output_root=tmp_path, gpu_ids=[0], base_env=env, run_name="j")


def test_only_trackers_with_a_server_are_checked() -> None:
    env = {"MLFLOW_TRACKING_URI": "http://10.0.0.1:5000", "WANDB_MODE": "offline"}
    assert remote_endpoints(("tensorboard", "mlflow", "wandb"), env) == {
        "mlflow": "http://10.0.0.1:5000"
    }
    assert remote_endpoints(("mlflow",), {"MLFLOW_TRACKING_URI": "file:///tmp/mlruns"}) == {}
    assert remote_endpoints(("wandb",), {}) == {"wandb": "https://api.wandb.ai"}


async def test_a_listening_server_passes_and_a_closed_port_is_left_out(tmp_path: Path) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        up = invocation(tmp_path, {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}, "mlflow")
        assert await unreachable_trackers(up) == {}
    finally:
        server.close()
        await server.wait_closed()
    closed = free_port()
    env = {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed}",
        "WANDB_BASE_URL": f"http://127.0.0.1:{closed}",
    }
    down = invocation(tmp_path, env, "tensorboard", "mlflow", "wandb")
    problems = await unreachable_trackers(down)
    assert set(problems) == {"mlflow", "wandb"}
    changed, warnings = without_unreachable(down, problems)
    start = changed.argv.index("--report_to") + 1
    assert changed.argv[start : start + 2] == ("tensorboard", "wandb")
    assert changed.argv[start + 2] == "--run_name"
    assert changed.env["WANDB_MODE"] == "offline"
    assert len(warnings) == 2 and warnings[0].startswith(f"mlflow: 127.0.0.1:{closed} cannot")
    only_mlflow = invocation(tmp_path, env, "mlflow")
    changed, _ = without_unreachable(only_mlflow, {"mlflow": "down"})
    start = changed.argv.index("--report_to") + 1
    assert changed.argv[start] == "none"
