"""The terminal's queue table: GPUs and why a job waits, for own and other owners' entries."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from swift_trainer.cli import render
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


# --- snapshots at 80 columns -----------------------------------------------------------------

JOBS: list[dict[str, Any]] = [
    {
        "job_id": "qwen-lora-7b-001",
        "status": "succeeded",
        "priority": 5,
        "gpu_count": 2,
        "progress": {"step": 200, "max_steps": 200, "percent": 100.0, "loss": 0.4213},
        "runner_id": "gpu-host-01",
        "submitted_at": "2026-12-07T10:01:02Z",
    },
    {
        "job_id": "held1",
        "status": "held",
        "priority": 9,
        "gpu_count": 1,
        "progress": None,
        "submitted_at": "2026-12-07T10:02:03Z",
    },
    {
        "job_id": "run-2",
        "status": "scheduled",
        "priority": 0,
        "gpu_count": 8,
        "progress": {"step": 35, "max_steps": 1000, "percent": 3.5, "loss": 1.23456},
        "submitted_at": "2026-12-07T10:03:04Z",
    },
]
SHOW: dict[str, Any] = {
    "job_id": "run-2",
    "status": "running",
    "priority": 5,
    "version": 12,
    "submitted_position": 40,
    "updated_position": 77,
    "data_path": "AI-ModelScope/alpaca-gpt4-data-en#500",
    "model_path": "Qwen/Qwen2.5-0.5B-Instruct",
    "output_dir": "output/run-2",
    "gpu_count": 1,
    "labels": {"team": "nlp"},
    "train_args": {"max_steps": 200, "save_steps": 50},
    "auto_start": True,
    "max_retries": 3,
    "attempt": 1,
    "retries": 0,
    "runner_id": "local",
    "gpu_ids": [0],
    "pid": 4242,
    "submitted_at": "2026-12-07T10:03:04Z",
    "started_at": "2026-12-07T10:03:05Z",
    "progress": {
        "step": 120,
        "max_steps": 200,
        "percent": 60.0,
        "loss": 0.91,
        "learning_rate": 9.5e-05,
    },
    "last_checkpoint": {"step": 100, "path": "output/run-2/checkpoint-100", "attempt": 1},
    "checkpoints": [
        {"step": 50, "path": "output/run-2/checkpoint-50", "attempt": 1},
        {"step": 100, "path": "output/run-2/checkpoint-100", "attempt": 1},
    ],
    "exports": [],
    "failure_reason": None,
}
QUEUE: dict[str, Any] = {
    "entries": [
        {
            "position": 1,
            "job_id": "wide-gang",
            "priority": 9,
            "gpu_count": 4,
            "estimated_wait_time": "in about 12 minutes",
        },
        {
            "position": 2,
            "job_id": None,
            "priority": 5,
            "gpu_count": 1,
            "estimated_wait_time": "unknown",
            "blocked_by": "owner_gpu_quota",
            "blocked_reason": None,
        },
        {
            "position": 3,
            "job_id": "too-big",
            "priority": 1,
            "gpu_count": 9,
            "estimated_wait_time": None,
            "unplaceable": "needs 9 GPUs on one runner, but the largest live runner has 8; "
            "the job waits until a runner that big reports",
        },
    ],
    "length": 3,
    "held": 1,
    "processor": {"state": "running"},
}
GPUS: dict[str, Any] = {
    "total": 2,
    "free": 1,
    "assigned": 1,
    "runners": [
        {
            "runner_id": "gpu-host-01",
            "alive": True,
            "gpus": [
                {
                    "index": 0,
                    "name": "NVIDIA H100 80GB HBM3",
                    "memory_total_mib": 81559,
                    "memory_used_mib": 40960,
                    "utilization_pct": 87,
                    "job_id": "qwen-lora-7b-001",
                },
                {
                    "index": 1,
                    "name": "NVIDIA H100 80GB HBM3",
                    "memory_total_mib": 81559,
                    "memory_used_mib": 0,
                    "utilization_pct": 0,
                    "job_id": None,
                },
            ],
        }
    ],
}


def at_80_columns(renderable: object) -> str:
    console = Console(width=80, record=True, color_system=None)
    console.print(renderable)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


SNAPSHOT_JOBS = """\
jobs

 JOB               STATUS     PRI  GPUS     STEP    LOSS  SUBMITTED
 ────────────────────────────────────────────────────────────────────
 qwen-lora-7b-001  succeeded    5     2  200/200  0.4213  12-07 10:01
 held1             held         9     1        -       -  12-07 10:02
 run-2             scheduled    0     8  35/1000   1.235  12-07 10:03"""

SNAPSHOT_SHOW = """\
run-2
 status        running
 priority      5
 data_path     AI-ModelScope/alpaca-gpt4-data-en#500
 model_path    Qwen/Qwen2.5-0.5B-Instruct
 output_dir    output/run-2
 gpu_count     1
 labels        team=nlp
 train_args    max_steps=200
               save_steps=50
 auto_start    True
 max_retries   3
 attempt       1
 retries       0
 runner_id     local
 gpu_ids       0
 submitted_at  2026-12-07T10:03:04Z
 started_at    2026-12-07T10:03:05Z
 progress      step 120/200 (60%), loss 0.91, learning_rate 9.5e-05
 checkpoints   step 50 (attempt 1): output/run-2/checkpoint-50
               step 100 (attempt 1): output/run-2/checkpoint-100"""

SNAPSHOT_QUEUE = """\
queue: 3 queued, 1 held; processor running

 #  JOB                PRI  GPUS  WAIT                 NOTE
 ──────────────────────────────────────────────────────────────────────────────
 1  wide-gang            9     4  in about 12 minutes
 2  (another owner's)    5     1  unknown              owner_gpu_quota
 3  too-big              1     9  -                    needs 9 GPUs on one
                                                       runner, but the largest
                                                       live runner has 8; the
                                                       job waits until a runner
                                                       that big reports"""

SNAPSHOT_GPUS = """\
GPUs: 2 on live runners, 1 free, 1 assigned

 RUNNER       GPU  NAME            MEMORY (GiB)      UTIL  JOB
 ──────────────────────────────────────────────────────────────────────────
 gpu-host-01    0  H100 80GB HBM3  █████░░░░░ 40/80   87%  qwen-lora-7b-001
 gpu-host-01    1  H100 80GB HBM3  ░░░░░░░░░░ 0/80     0%"""


@pytest.mark.parametrize(
    ("renderable", "snapshot"),
    [
        (render.jobs_table(JOBS), SNAPSHOT_JOBS),
        (render.job_details(SHOW), SNAPSHOT_SHOW),
        (render.queue_table(QUEUE), SNAPSHOT_QUEUE),
        (render.gpus_table(GPUS), SNAPSHOT_GPUS),
    ],
    ids=["jobs list", "jobs show", "queue", "gpus"],
)
def test_tables_at_80_columns(renderable: object, snapshot: str) -> None:
    text = at_80_columns(renderable).rstrip("\n")
    assert text == snapshot
    assert max(len(line) for line in text.splitlines()) <= 80


def test_a_long_job_id_never_cuts_a_status_word() -> None:
    long_id = "a" * 40
    jobs = [{**job, "job_id": f"{long_id}-{n}"} for n, job in enumerate(JOBS)]
    text = at_80_columns(render.jobs_table(jobs))
    for status in ("succeeded", "held", "scheduled"):
        assert status in text
    assert all(f"{long_id}-{n}" in text for n in range(len(jobs)))
    assert max(len(line) for line in text.splitlines()) <= 80


def test_jobs_show_leaves_out_internal_fields() -> None:
    text = at_80_columns(render.job_details(SHOW))
    for internal in ("version", "submitted_position", "updated_position", "last_checkpoint"):
        assert internal not in text


def test_a_multi_node_job_shows_its_shape() -> None:
    job = {
        "job_id": "big",
        "status": "running",
        "priority": 5,
        "gpu_count": 8,
        "nodes": 4,
        "runner_id": "gpu-1",
        "hosts": ["gpu-1", "gpu-2", "gpu-3", "gpu-4"],
    }
    console = Console(width=80, record=True)
    console.print(render.jobs_table([job, {**job, "job_id": "one", "nodes": 1}]))
    text = console.export_text()
    assert "4x8" in text
    assert " 8 " in text


def test_jobs_show_gives_each_tracker_run_a_row_with_its_link() -> None:
    url = "http://mlflow.example:5000/#/experiments/3/runs/0123456789abcdef0123456789abcdef"
    job = {"job_id": "tracked", "status": "running", "tracker_urls": {"mlflow": url}}
    console = Console(width=80, record=True)
    console.print(render.job_details(job))
    text = console.export_text(clear=False)
    assert "mlflow run" in text
    assert url in "".join(text.split()), "a folded URL is still the whole URL"
    assert f'href="{url}"' in console.export_html(), "and a terminal link"
