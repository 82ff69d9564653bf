"""Fixtures shared by every test folder: services that may be absent on a fresh machine."""

from __future__ import annotations

import os

import pytest


def require_services() -> bool:
    """In CI (REQUIRE_SERVICES=1) an absent service fails the run instead of skipping."""
    return os.environ.get("REQUIRE_SERVICES", "").strip().lower() in {"1", "true", "yes"}


def service_unavailable(what: str, error: BaseException) -> None:
    message = f"{what} is not reachable ({error!r})"
    if require_services():
        pytest.fail(f"{message}, and REQUIRE_SERVICES=1 requires it")
    pytest.skip(f"{message}; set REQUIRE_SERVICES=1 to make this a failure")
