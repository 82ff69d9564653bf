"""The short chaos run (``scripts/chaos.py``): the distributed topology as real processes,
random SIGKILLs, and every invariant checked from the event log afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import service_unavailable

ROOT = Path(__file__).resolve().parents[2]


def _postgres_reachable() -> None:
    import asyncio

    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test", timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        service_unavailable("PostgreSQL at 127.0.0.1:5432", exc)


@pytest.mark.timeout(420)
def test_thirty_jobs_survive_ten_kills_with_no_invariant_broken(tmp_path: Path) -> None:
    _postgres_reachable()
    report_file = tmp_path / "report.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "chaos.py"),
            "--jobs",
            "30",
            "--kills",
            "10",
            "--seed",
            "7",
            "--report",
            str(report_file),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert report_file.exists(), run.stderr[-4000:]
    report = json.loads(report_file.read_text())
    assert report["violations"] == [], run.stderr[-4000:]
    assert run.returncode == 0
    assert report["statuses"] == {"succeeded": 30}
    assert report["kills_total"] == 10
    assert report["kills"]["nats"] >= 1
    assert report["kills"]["redis"] >= 1
    assert report["kills"]["runner"] >= 1
    assert report["notes"]["runner_kills_mid_training"] >= 1
    assert report["notes"]["jetstream_replicas"] == 3
    assert report["notes"]["rebuild"]["events_applied"] == report["events"]
    assert report["processes_left"] == []
    assert set(report["exit_codes"].values()) == {0}, "every component stops cleanly"
    assert report["placements"] >= 30
    assert report["commands_rechecked"] >= 30
