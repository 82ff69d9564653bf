"""The terminal's queue table: GPUs and why a job waits, for own and other owners' entries."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from swift_trainer.cli.render import queue_table


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
    ],
)
def test_queue_rows(entry: dict[str, Any], shown: list[str], hidden: list[str]) -> None:
    text = rendered(entry)
    assert "GPUS" in text
    for part in shown:
        assert part in text
    for part in hidden:
        assert part not in text
