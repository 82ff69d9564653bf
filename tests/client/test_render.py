"""The terminal's queue table: GPUs and why a job waits, for own and other owners' entries."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from swift_trainer.client.render import queue_table


def rendered(entry: dict[str, Any]) -> str:
    queue = {"entries": [entry], "length": 1, "held": 0, "processor": {"state": "running"}}
    console = Console(width=200, record=True)
    console.print(queue_table(queue))
    return console.export_text()


BASE = {"position": 1, "priority": 5, "gpu_count": 2, "estimated_wait_time": "unknown"}


@pytest.mark.parametrize(
    ("entry", "shown", "hidden"),
    [
        ({**BASE, "job_id": "mine"}, ["mine", " 2 ", "unknown"], ["another owner"]),
        ({**BASE, "job_id": None}, ["(another owner's)", " 2 "], ["None"]),
        (
            {
                **BASE,
                "job_id": "mine",
                "blocked_by": "owner_gpu_quota",
                "blocked_reason": "owner 'ann' has 1 of its max_gpus 1",
            },
            ["max_gpus 1"],
            [],
        ),
        (
            {**BASE, "job_id": None, "blocked_by": "owner_gpu_quota", "blocked_reason": None},
            ["owner_gpu_quota"],
            ["None"],
        ),
        ({**BASE, "job_id": "big", "unplaceable": "needs 9 GPUs"}, ["needs 9 GPUs"], []),
        ({**BASE, "job_id": "gang", "nodes": 3}, ["gang", "3x2"], []),
    ],
)
def test_queue_rows(entry: dict[str, Any], shown: list[str], hidden: list[str]) -> None:
    text = rendered(entry)
    assert "GPUS" in text
    for part in shown:
        assert part in text
    for part in hidden:
        assert part not in text


def test_a_multi_node_job_shows_its_shape_and_every_host() -> None:
    from swift_trainer.client.render import jobs_table

    job = {
        "job_id": "big",
        "status": "running",
        "priority": 5,
        "gpu_count": 8,
        "nodes": 4,
        "runner_id": "gpu-1",
        "hosts": ["gpu-1", "gpu-2", "gpu-3", "gpu-4"],
    }
    console = Console(width=200, record=True)
    console.print(jobs_table([job, {**job, "job_id": "one", "nodes": 1, "hosts": ["gpu-9"]}]))
    text = console.export_text()
    assert "4x8" in text
    assert "gpu-1,gpu-2,gpu-3,gpu-4" in text
    assert "gpu-9" in text
