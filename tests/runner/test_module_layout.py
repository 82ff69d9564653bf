"""The runner package's shape: module names that say what they hold, modules a reader can
take in at once."""

from __future__ import annotations

from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "swift_trainer"
RUNNER = SRC / "runner"
MAX_LINES = 600


def test_no_runner_module_shares_its_name_with_another_module() -> None:
    others: dict[str, list[str]] = {}
    for path in SRC.rglob("*.py"):
        if path.parent != RUNNER:
            others.setdefault(path.name, []).append(str(path.relative_to(SRC)))
    clashes = {
        path.name: others[path.name]
        for path in RUNNER.glob("*.py")
        if path.name != "__init__.py" and path.name in others
    }
    assert clashes == {}


def test_runner_modules_stay_short() -> None:
    long = {
        path.name: length
        for path in RUNNER.glob("*.py")
        if (length := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}
