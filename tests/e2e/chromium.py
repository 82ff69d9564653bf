"""Headless Chromium (Debian's ``chromium``) as a person's browser, with the network cut off.

Every host name except 127.0.0.1 resolves to nothing and any proxied request goes to a
closed port, so a page that needs a CDN fails here exactly as it would on an offline GPU
cluster. Loopback stays reachable, which is where the service under test listens.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.conftest import require_services

OFFLINE_FLAGS = (
    "--proxy-server=127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "headless Chromium is not installed (apt-get install chromium)"
    if require_services():
        pytest.fail(f"{message}, and REQUIRE_SERVICES=1 requires it")
    pytest.skip(message)


def dump_dom_offline(url: str, profile: Path, *, budget_ms: int = 10_000) -> str:
    """The page's DOM after its scripts ran (``--virtual-time-budget``), network cut off."""
    result = subprocess.run(
        [
            chromium_binary(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *OFFLINE_FLAGS,
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def listed_operations(dom: str) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation Swagger UI rendered into the page."""
    operations = set()
    for block in re.finditer(r'<div class="opblock opblock-(\w+)[^"]*"[^>]*>(.*?)</button>', dom):
        path = re.search(r'data-path="([^"]+)"', block.group(2))
        if path:
            operations.add((block.group(1).upper(), path.group(1)))
    return operations
