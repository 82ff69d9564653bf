"""``swift-trainer audit``: exit codes and output a script can trust, over a real SQLite store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.projections.audit_history import StoredHistory, store_history

from swift_trainer.cli import main
from swift_trainer.core.sqlstore import open_event_store


@pytest.fixture
def stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StoredHistory:
    url = f"sqlite+aiosqlite:///{tmp_path / 'events.db'}"
    monkeypatch.setenv("EVENT_STORE_URL", url)
    for name in ("REDIS_URL", "REDIS_HOST"):
        monkeypatch.delenv(name, raising=False)

    async def fill() -> StoredHistory:
        store = open_event_store(url)
        await store.setup()
        try:
            return await store_history(store)
        finally:
            await store.close()

    return asyncio.run(fill())


def _tamper(tmp_path: Path, sql: str) -> None:
    async def run() -> None:
        store = open_event_store(f"sqlite+aiosqlite:///{tmp_path / 'events.db'}")
        try:
            async with store.engine.begin() as conn:
                await conn.execute(sa.text(sql))
        finally:
            await store.close()

    asyncio.run(run())


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_passes_then_names_the_changed_position(
    stored: StoredHistory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "audit", "verify")
    assert code == 0, out
    assert out.rstrip().endswith("OK")
    assert "events/s" in out

    _tamper(tmp_path, "UPDATE events SET payload = CAST('[]' AS BLOB) WHERE position = 6")
    code, out, _ = _run(capsys, "audit", "verify", "--output", "json")
    report = json.loads(out)
    assert code == 1
    assert report["ok"] is False
    assert [p["position"] for p in report["chain_problems"]] == [6]


def test_verify_names_a_deleted_position(
    stored: StoredHistory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _tamper(tmp_path, "DELETE FROM events WHERE position = 3")
    code, out, _ = _run(capsys, "audit", "verify")
    assert code == 1
    assert "position 3 is missing" in out
    assert out.rstrip().endswith("FAILED")


def test_show_lists_the_history_as_json_and_as_a_table(
    stored: StoredHistory, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "audit", "show", "train-1", "--output", "json")
    assert code == 0
    entries = json.loads(out)
    assert [e["event"] for e in entries][:2] == ["JobSubmitted", "JobQueued"]
    assert {"time", "actor", "command_id", "trace_id", "summary"} <= set(entries[0])
    code, out, _ = _run(capsys, "audit", "show", "train-1")
    assert code == 0
    assert "JobSucceeded" in out

    code, _, err = _run(capsys, "audit", "show", "nobody")
    assert code == 2
    assert "no events for job 'nobody'" in err


def test_as_of_prints_the_state_at_that_moment(
    stored: StoredHistory, capsys: pytest.CaptureFixture[str]
) -> None:
    for position, expected in stored.states:
        code, out, _ = _run(
            capsys, "audit", "show", "train-1", "--as-of", str(position), "-o", "json"
        )
        assert code == 0
        printed = json.loads(out)
        assert printed["as_of_position"] == position
        assert printed["state"]["status"] == expected.status.value
        assert printed["state"]["version"] == expected.version
    running = next(p for p, s in stored.states if s.status.value == "running")
    at = next(e.recorded_at for e in stored.events if e.position == running)
    code, out, _ = _run(capsys, "audit", "show", "train-1", "--as-of", at.isoformat(), "-o", "json")
    assert json.loads(out)["state"]["status"] == "running"

    with pytest.raises(SystemExit) as exited:
        main(["audit", "show", "train-1", "--as-of", "yesterday"])
    assert exited.value.code == 2
    assert "neither a position" in capsys.readouterr().err


def test_export_verifies_offline_and_a_changed_line_fails(
    stored: StoredHistory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "audit.jsonl"
    argv = ["audit", "export", "--since", "4", "--until", "9", "--out", str(export)]
    code, _, _ = _run(capsys, *argv)
    assert code == 0
    lines = export.read_bytes().splitlines()
    assert json.loads(lines[0])["anchor"]["position"] == 3
    assert [json.loads(line)["event"]["position"] for line in lines[1:]] == list(range(4, 10))
    code, out, _ = _run(capsys, "audit", "verify", "--file", str(export))
    assert (code, out.rstrip().splitlines()[-1]) == (0, "OK")

    lines[3] = lines[3].replace(b'"actor\\":\\"scheduler', b'"actor\\":\\"mallory')
    lines[3] = lines[3].replace(b'"actor\\":\\"key-alice', b'"actor\\":\\"mallory')
    assert b"mallory" in lines[3]
    export.write_bytes(b"\n".join(lines) + b"\n")
    code, out, _ = _run(capsys, "audit", "verify", "--file", str(export), "-o", "json")
    assert code == 1
    assert [p["position"] for p in json.loads(out)["chain_problems"]] == [6]
