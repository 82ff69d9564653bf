"""The ledger of handled event ids."""

from __future__ import annotations

from pathlib import Path

from swift_trainer.runner.host_checks import HandledEvents


def test_handled_events_persist_and_stay_bounded(tmp_path: Path) -> None:
    ledger = HandledEvents(tmp_path / "handled.json", limit=3)
    for event_id in ("a", "b", "c", "d"):
        ledger.add(event_id)
    again = HandledEvents(tmp_path / "handled.json", limit=3)
    assert "a" not in again
    assert all(x in again for x in ("b", "c", "d"))
    (tmp_path / "handled.json").write_text("nonsense")
    assert "b" not in HandledEvents(tmp_path / "handled.json")


def test_the_ledger_leaves_no_temp_file(tmp_path: Path) -> None:
    ledger = HandledEvents(tmp_path / "state" / "handled.json")
    ledger.add("a")
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["handled.json"]
