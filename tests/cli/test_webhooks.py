"""``swift-trainer webhooks``: an admin registers, lists, inspects and removes webhooks."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from swift_trainer.cli import main
from swift_trainer.core import webhook_events as w


@pytest.fixture(autouse=True)
def _store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWIFT_TRAINER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("EVENT_STORE_URL", raising=False)
    monkeypatch.delenv("WEBHOOK_SIGNING_KEY", raising=False)


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    code = main([*argv, "-o", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_add_list_deliveries_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    added = _json(
        capsys,
        "webhooks",
        "add",
        "http://127.0.0.1:9/hook",
        "--id",
        "ops",
        "--event",
        "JobSucceeded",
        "--event",
        "JobFailed",
    )
    assert isinstance(added, dict)
    key_file = tmp_path / "data" / "webhook-signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert added["secret"] == w.webhook_secret(key_file.read_text().strip().encode(), "ops")
    listed = _json(capsys, "webhooks", "list")
    assert isinstance(listed, list)
    assert [(h["webhook_id"], h["url"], h["event_types"]) for h in listed] == [
        ("ops", "http://127.0.0.1:9/hook", ["JobSucceeded", "JobFailed"])
    ]
    trail = _json(capsys, "webhooks", "deliveries", "ops")
    assert isinstance(trail, list)
    assert [e["type"] for e in trail] == ["WebhookRegistered"]
    assert trail[0]["registered_by"].startswith("admin")

    assert _json(capsys, "webhooks", "remove", "ops", "--reason", "done") == {
        "webhook_id": "ops",
        "removed": True,
    }
    listed = _json(capsys, "webhooks", "list")
    assert isinstance(listed, list)
    assert listed[0]["removed"] is True


def test_refusals_are_clear(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["webhooks", "add", "ftp://x", "--id", "a"]) == 2
    assert "must start with http" in capsys.readouterr().err
    assert main(["webhooks", "add", "http://x", "--id", "a.b"]) == 2
    assert "invalid webhook id" in capsys.readouterr().err
    assert main(["webhooks", "add", "http://x", "--id", "twice"]) == 0
    capsys.readouterr()
    assert main(["webhooks", "add", "http://x", "--id", "twice"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["webhooks", "remove", "ghost"]) == 2
    assert "no webhook 'ghost'" in capsys.readouterr().err
