"""``swift_trainer_gpu_seconds_total{owner}``: GPU-seconds used per owner, from the usage fold.

A collector, so the series is a true counter whose value is the fold's total (it grows as
attempts run); the fold is refreshed every few seconds in the background, never per scrape.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Final

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from ...core.clock import Clock, utc_now
from ...core.usage import gpu_seconds_by_owner
from ...projections.usage_view import UsageView

_log = logging.getLogger(__name__)


class GpuSecondsCollector(Collector):
    """Serves the last totals the sampler set."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "swift_trainer_gpu_seconds",
            "GPU-seconds used by running attempts, per job owner (from the event log).",
            labels=["owner"],
        )
        for owner, seconds in sorted(self.totals.items()):
            family.add_metric([owner], seconds)
        yield family


GPU_SECONDS: Final = GpuSecondsCollector()
REGISTRY.register(GPU_SECONDS)


async def count_gpu_seconds(usage: UsageView, interval_s: float, clock: Clock = utc_now) -> None:
    """Every ``interval_s``: fold what the store appended and set the per-owner totals."""
    while True:
        try:
            ledger = await usage.ledger()
            GPU_SECONDS.totals = gpu_seconds_by_owner(ledger, clock())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a sampler never takes its process down
            _log.debug("cannot fold usage: %r", exc)
        await asyncio.sleep(interval_s)
