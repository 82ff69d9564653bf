"""The one wall clock. Pure code takes ``now`` as an argument; the shells that need the
time read it here, so a test can pass its own ``Clock`` instead."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)
