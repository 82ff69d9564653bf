"""The README's five-minute tour, run as written against ``swift-trainer up --simulate-gpus 2``.

The shell blocks of the tour's section are joined into one script and run by bash with
``set -euo pipefail``, so a command that fails or a status that never comes fails the
test. Only the address changes: the service listens on a free port in a fresh data folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .live_service import Service, start_service, stop_service

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
TOUR_HEADING = "## A five-minute tour"
README_ADDRESS = "127.0.0.1:8000"


def tour_blocks(readme: str) -> list[str]:
    """The ```bash blocks between the tour's heading and the next heading of its level."""
    start = readme.index(TOUR_HEADING)
    end = readme.find("\n## ", start + len(TOUR_HEADING))
    section = readme[start : end if end != -1 else len(readme)]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)


def test_the_tour_has_the_steps_it_promises() -> None:
    script = "\n".join(tour_blocks(README.read_text(encoding="utf-8")))
    for step in ("jobs submit", "jobs show", "jobs stop", "jobs start", "jobs export"):
        assert step in script, f"the tour lost its {step!r} step"
    assert "wait_for tour stopped" in script, "the tour waits for stopped before it goes on"


def _tool_path() -> str:
    """PATH with this interpreter's folder and uv, as a reader's shell would have them."""
    folders = [str(Path(sys.executable).parent)]
    uv = shutil.which("uv") or os.environ.get("UV")
    if uv is None and (Path.home() / ".local/bin/uv").exists():
        uv = str(Path.home() / ".local/bin/uv")
    if uv is None:
        pytest.fail("uv is not installed: the README's commands need it")
    folders.append(str(Path(uv).parent))
    return os.pathsep.join([*folders, os.environ.get("PATH", "")])


@pytest.mark.timeout(300)
def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    blocks = tour_blocks(README.read_text(encoding="utf-8"))
    process, base = start_service(tmp_path / "data")
    service = Service(process, base, tmp_path / "data" / "outputs")
    address = base.removeprefix("http://")
    script = "set -euo pipefail\n" + "\n".join(blocks).replace(README_ADDRESS, address)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NATS_", "EVENT_STORE", "REDIS", "SWIFT_TRAINER_"))
    }
    env.update(SWIFT_TRAINER_URL=base, PATH=_tool_path(), UV_NO_SYNC="1")
    try:
        done = subprocess.run(
            ["bash", "-c", script],
            check=False,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"the tour failed:\n{done.stdout[-4000:]}\n{done.stderr}"
        assert "tour" in done.stdout
        job = service.wait_for(
            "the tour's export to finish",
            lambda: next(
                (
                    x
                    for x in service.http.get("/jobs/tour").json().get("exports") or []
                    if x.get("status") == "succeeded"
                ),
                None,
            ),
        )
        assert Path(job["artifact_path"]).is_relative_to(tmp_path / "data")
        assert service.status("tour") == "stopped"
    finally:
        service.http.close()
        stop_service(process)
