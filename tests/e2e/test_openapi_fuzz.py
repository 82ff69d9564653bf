"""Schemathesis against the live service's OpenAPI spec: nothing a client sends is a 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.e2e.live_service import start_service, stop_service


@pytest.mark.timeout(900)
def test_no_generated_request_gets_a_server_error(tmp_path: Path) -> None:
    process, base = start_service(tmp_path, "--simulate-step-seconds", "0.2")
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "run",
                f"{base}/schema/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "10",
                "--request-timeout",
                "10",
                # Live streams stay open while a job lives; the plain reads are fuzzed.
                "--exclude-path-regex",
                "/stream$",
                "--generation-deterministic",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    finally:
        stderr = stop_service(process)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert process.returncode == 0, stderr[-3000:]
