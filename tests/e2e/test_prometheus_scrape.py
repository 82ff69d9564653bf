"""A real Prometheus (Debian's ``prometheus``) scrapes a running ``up`` and answers queries.

The test starts Prometheus on a free port with its own config and data folder, points it
at the service's ``/metrics`` (the API port) and at ``--metrics-port``, runs one simulated
job through, and asks Prometheus' HTTP API for the series a dashboard is built on.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import require_services

from swift_trainer.bus.embedded import free_port

from .live_service import API, start_service, stop_service


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        message = "Prometheus is not installed (apt-get install prometheus)"
        if require_services():
            pytest.fail(f"{message}, and REQUIRE_SERVICES=1 requires it")
        pytest.skip(message)
    return found


def _start_prometheus(
    binary: str, folder: Path, targets: list[str]
) -> tuple[subprocess.Popen[str], str]:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    quoted = ", ".join(f"'{target}'" for target in targets)
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: swift-trainer\n    static_configs:\n      - targets: [{quoted}]\n",
        encoding="utf-8",
    )
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, int]]:
    metrics_port = free_port()
    process, base = start_service(
        tmp_path / "data",
        "--metrics-port",
        str(metrics_port),
        env_extra={"SWIFT_SIM_STEP_SECONDS": "0.02"},
    )
    try:
        yield base, metrics_port
    finally:
        stop_service(process)


def _query(prometheus: str, expression: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expression}, timeout=5)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_prometheus_scrapes_jobs_by_status_and_command_latency(
    tmp_path: Path, prometheus_binary: str, service: tuple[str, int]
) -> None:
    base, metrics_port = service
    with httpx.Client(base_url=base + API, timeout=10) as http:
        body = {"job_id": "scraped", "data_path": "d#40", "model_path": "m"}
        created = http.post("/jobs", json=body)
        assert created.status_code == 201, created.text
        deadline = time.monotonic() + 60
        while http.get("/jobs/scraped/status").json()["status"] != "succeeded":
            assert time.monotonic() < deadline, "the simulated job did not succeed"
            time.sleep(0.2)

    api_target = base.removeprefix("http://")
    process, prometheus = _start_prometheus(
        prometheus_binary, tmp_path / "prometheus", [api_target, f"127.0.0.1:{metrics_port}"]
    )
    try:
        wanted = {
            "jobs": 'swift_trainer_jobs{status="succeeded"} == 1',
            "latency": 'swift_trainer_command_duration_seconds_count{command="SubmitJob"}',
            "p95": "histogram_quantile(0.95, sum by (le, command) "
            "(rate(swift_trainer_command_duration_seconds_bucket[1m])))",
            "queue_wait": "swift_trainer_queue_wait_seconds_count >= 1",
            "up": "up == 1",
        }
        found: dict[str, list[dict[str, Any]]] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(found) < len(wanted):
            assert process.poll() is None, process.communicate()[1][-3000:]
            for name, expression in wanted.items():
                try:
                    result = _query(prometheus, expression)
                except httpx.HTTPError:
                    break  # Prometheus is still starting
                if result and (name != "up" or len(result) == 2):
                    found[name] = result
            time.sleep(0.5)
        assert set(found) == set(wanted), f"no series for {set(wanted) - set(found)}"
        # Both targets (the API port and --metrics-port) export the jobs gauge.
        instances = {series["metric"]["instance"] for series in found["jobs"]}
        assert instances == {api_target, f"127.0.0.1:{metrics_port}"}
        assert float(found["latency"][0]["value"][1]) >= 1
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
