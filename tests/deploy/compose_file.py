"""compose.yaml as data: its services with YAML anchors merged and ``${VAR:-default}`` filled
in the way Docker Compose would, so tests can check it and run its commands."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DEPLOY = ROOT / "deploy"

_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    values = env or {}
    return _VARIABLE.sub(lambda m: values.get(m.group(1)) or m.group(2) or "", text)


def load_compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = load_compose()["services"][name]
    return found


def command_of(name: str) -> list[str]:
    return [interpolate(str(part)) for part in service(name)["command"]]


def environment_of(name: str) -> dict[str, str]:
    raw = service(name).get("environment", {})
    return {key: interpolate(str(value)) for key, value in raw.items()}


def replicas_of(name: str) -> int:
    return int(service(name).get("deploy", {}).get("replicas", 1))
