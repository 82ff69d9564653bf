"""Whether the API may serve where it binds: no authentication only on loopback.

The composition root checks this before it serves; an explicit ``--insecure-no-auth``
turns the refusal into a warning repeated while the API runs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Final

from ...core.errors import SwiftTrainerError
from ...core.settings import Settings

_log = logging.getLogger("swift_trainer")

#: How often the "no authentication" warning repeats while the API serves.
INSECURE_WARNING_EVERY_S: Final = 3600.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> bool:
    """Refuse (SwiftTrainerError) an API without authentication beyond loopback, unless
    ``--insecure-no-auth``; True when the insecure warning must be repeated."""
    if settings.api_auth == "required" or is_loopback(settings.app_host):
        return False
    if not settings.insecure_no_auth:
        raise SwiftTrainerError(
            f"refusing to serve the API on {settings.app_host} without authentication: "
            "pass --auth required (and make a key: swift-trainer keys create --owner NAME "
            "--role admin), bind to 127.0.0.1, or pass --insecure-no-auth",
            code="insecure_bind",
        )
    return True


async def warn_insecure(host: str, every_s: float = INSECURE_WARNING_EVERY_S) -> None:
    """The warning at start and then every ``every_s``, for as long as the API serves."""
    while True:
        _log.warning(
            "SECURITY: the API serves on %s WITHOUT authentication (--insecure-no-auth): "
            "anyone who reaches it can run and stop training",
            host,
        )
        await asyncio.sleep(every_s)
