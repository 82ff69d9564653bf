"""The API's exposure rule: no authentication only on loopback, else a repeated warning."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from swift_trainer.api.auth.exposure import check_exposure, is_loopback, warn_insecure
from swift_trainer.core.errors import SwiftTrainerError
from swift_trainer.core.settings import load_settings


def test_only_loopback_or_authentication_serves_without_a_warning() -> None:
    settings = load_settings({"APP_HOST": "0.0.0.0", "API_INSECURE_NO_AUTH": "true"})
    assert check_exposure(settings) is True
    assert check_exposure(load_settings({})) is False  # 127.0.0.1 by default
    assert check_exposure(load_settings({"APP_HOST": "0.0.0.0", "API_AUTH": "required"})) is False
    with pytest.raises(SwiftTrainerError) as refused:
        check_exposure(load_settings({"APP_HOST": "0.0.0.0"}))
    assert refused.value.code == "insecure_bind"
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("10.0.0.1")


class _ThirdWarning(logging.Handler):
    """Sets ``seen`` once three "no authentication" warnings have been logged."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "WITHOUT authentication" in record.getMessage():
            self.count += 1
            if self.count >= 3:
                self.seen.set()


async def test_the_insecure_warning_repeats() -> None:
    handler = _ThirdWarning()
    logger = logging.getLogger("swift_trainer")
    logger.addHandler(handler)
    task = asyncio.create_task(warn_insecure("0.0.0.0", every_s=0.01))
    try:
        async with asyncio.timeout(10):
            await handler.seen.wait()
    finally:
        logger.removeHandler(handler)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert handler.count >= 3
