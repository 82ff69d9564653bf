"""compose.yaml and the files under deploy/: valid for their own tools, and consistent with
each other and with the metrics the code exports.

No Docker engine runs here: Debian's ``docker-compose config -q`` validates the file against
the compose specification, ``promtool`` the Prometheus config, the nats-server from the
wheel the NATS config.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from tests.conftest import require_services

from swift_trainer.bus.embedded import nats_server_binary

from .compose_file import COMPOSE, DEPLOY, ROOT, command_of, load_compose, replicas_of, service
from .nats_auth import compose_passwords

COMPONENTS = ("handler", "scheduler", "api", "runner", "sim-runner")


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (apt-get install {package})"
        if require_services():
            pytest.fail(f"{message}, and REQUIRE_SERVICES=1 requires it")
        pytest.skip(message)
    return found


@pytest.mark.parametrize("profiles", [(), ("sim",), ("gpu", "sim")])
def test_docker_compose_validates_the_file(profiles: tuple[str, ...]) -> None:
    flags = [flag for profile in profiles for flag in ("--profile", profile)]
    result = subprocess.run(
        [_tool("docker-compose", "docker-compose"), "-f", str(COMPOSE), *flags, "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_validator_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    command:", "    comand:", 1))
    result = subprocess.run(
        [_tool("docker-compose", "docker-compose"), "-f", str(broken), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode != 0


def test_the_topology_is_the_one_the_issue_asks_for() -> None:
    compose = load_compose()
    assert "version" not in compose
    services = compose["services"]
    assert replicas_of("handler") == 2
    assert replicas_of("scheduler") == 2
    assert "8000:8000" in services["api"]["ports"]
    devices = services["runner"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]
    assert services["sim-runner"]["profiles"] == ["sim"]
    assert "--simulate-gpus" in command_of("sim-runner")
    for infra in ("nats", "postgres", "redis"):
        assert "healthcheck" in services[infra], infra
        assert any(":/" in volume for volume in services[infra]["volumes"]), infra
    assert "--appendonly" in services["redis"]["command"]
    for name in COMPONENTS:
        depends = service(name)["depends_on"]
        for infra in ("nats", "postgres", "redis"):
            assert depends[infra]["condition"] == "service_healthy", (name, infra)
    for name in ("otel-collector", "jaeger", "prometheus", "grafana"):
        assert name in services


def test_every_component_exports_traces_to_the_collector_and_is_scraped() -> None:
    collector = yaml.safe_load((DEPLOY / "otel-collector" / "config.yaml").read_text())
    http = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    port = http.rsplit(":", 1)[1]
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    scraped: set[str] = set()
    for job in prometheus["scrape_configs"]:
        for static in job.get("static_configs", []):
            scraped.update(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            scraped.update(f"{name}:{dns['port']}" for name in dns["names"])
    for name in COMPONENTS:
        env = service(name)["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://otel-collector:{port}", name
        command = command_of(name)
        metrics_port = (
            command[command.index("--metrics-port") + 1] if "--metrics-port" in command else None
        )
        target = f"{name}:{metrics_port or env.get('APP_PORT')}"
        assert target in scraped, f"Prometheus does not scrape {target}"
    exporters = collector["service"]["pipelines"]["traces"]["exporters"]
    assert all(exporter in collector["exporters"] for exporter in exporters)


def test_nats_config_is_valid_and_syncs_every_write() -> None:
    config = DEPLOY / "nats" / "nats.conf"
    assert re.search(r"^\s*sync_interval:\s*always\s*$", config.read_text(), re.MULTILINE)
    result = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(config)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **compose_passwords()},  # auth.conf reads them, as compose sets them
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_prometheus_config_is_valid() -> None:
    config = DEPLOY / "prometheus" / "prometheus.yml"
    result = subprocess.run(
        [_tool("promtool", "prometheus"), "check", "config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _registered_families() -> set[str]:
    # Importing the modules registers their instruments; the HTTP ones exist after a request.
    import swift_trainer.api.metrics
    import swift_trainer.bus.metrics
    import swift_trainer.projections.scheduler.telemetry
    import swift_trainer.runner.gpu_metrics  # noqa: F401

    return {family.name for family in REGISTRY.collect()}


def test_every_dashboard_query_names_a_metric_the_code_exports() -> None:
    dashboard: dict[str, Any] = json.loads(
        (DEPLOY / "grafana" / "dashboards" / "swift-trainer.json").read_text()
    )
    families = _registered_families() | {
        # Litestar's middleware registers these on the first request.
        "swift_trainer_http_requests",
        "swift_trainer_http_request_duration_seconds",
    }
    used: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used.update(re.findall(r"swift_trainer_\w+", target["expr"]))
    assert len(used) >= 15
    for name in sorted(used):
        family = re.sub(r"_(bucket|count|sum|total)$", "", name)
        assert family in families, f"the dashboard queries {name}, which nothing exports"
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("status", "queue", "gpu utilisation", "gpu memory", "command latency"):
        assert topic in titles
    for topic in ("relay lag", "read-model lag", "errors"):
        assert topic in titles


def test_grafana_provisions_the_dashboard_and_both_datasources() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "datasources.yaml").read_text())
    assert {s["type"] for s in sources["datasources"]} == {"prometheus", "jaeger"}
    providers = yaml.safe_load((provisioning / "dashboards" / "dashboards.yaml").read_text())
    mounted = service("grafana")["volumes"]
    path = providers["providers"][0]["options"]["path"]
    assert any(volume.endswith(f":{path}:ro") for volume in mounted)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "deploy/runner.Dockerfile"])
def test_images_run_as_a_non_root_user_with_a_health_check(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users, "no USER line"
    assert users[-1] not in {"root", "0"}
    assert re.search(r"^HEALTHCHECK\s", text, re.MULTILINE)
    assert "uv" in text


def test_the_slim_image_is_multi_stage_and_the_runner_has_the_swift_extra() -> None:
    assert len(re.findall(r"^FROM\s", (ROOT / "Dockerfile").read_text(), re.MULTILINE)) >= 2
    runner = (ROOT / "deploy" / "runner.Dockerfile").read_text()
    assert "--extra swift" in runner
    assert re.search(r"pytorch/pytorch:\S*cuda", runner)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored
    assert ".git" in ignored
