"""The host's resources, as runners and the API report them."""

from __future__ import annotations

from pathlib import Path

from swift_trainer.core.host import host_info


def test_host_info_uses_the_nearest_existing_folder(tmp_path: Path) -> None:
    info = host_info(tmp_path / "not" / "yet")
    assert info.disk_path == str(tmp_path)
    assert info.disk_total_bytes > 0
    assert info.cpu_count >= 1
    assert info.memory_total_bytes >= info.memory_available_bytes > 0
    assert info.hostname
