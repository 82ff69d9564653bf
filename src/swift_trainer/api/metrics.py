"""``/metrics`` on the API port, HTTP latency by route, and the gauges read from read models.

HTTP series come from a route middleware (``prometheus-client`` underneath), grouped by
route template so a job id never becomes a label. The fleet's gauges (jobs by
status, runners alive, GPUs total and free per runner, read-model lag) are sampled
every few seconds from the read models this process serves, not computed per scrape:
a scrape is served from a thread and must not wait on Redis. Each GPU's NVML readings are
exported by its own runner (``runner/gpu_metrics.py``), as a node exporter would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Final

import msgspec
from litestar.enums import ScopeType
from litestar.plugins.prometheus import PrometheusController
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Gauge, Histogram

from ..core.clock import Clock, utc_now
from ..core.inventory import RunnerHeartbeat
from ..core.job import JobStatus
from ..projections.read_models.interface import ReadModel
from .system.resources import gpu_holders

_log = logging.getLogger(__name__)

METRICS_PATH: Final = "/metrics"

JOBS: Final = Gauge("swift_trainer_jobs", "Live jobs by status.", ["status"])
RUNNERS_ALIVE: Final = Gauge(
    "swift_trainer_runners_alive", "Runners heard from within their heartbeat lease."
)
GPUS_TOTAL: Final = Gauge("swift_trainer_gpus", "GPUs a live runner reports.", ["runner"])
GPUS_FREE: Final = Gauge(
    "swift_trainer_gpus_free", "GPUs of a live runner that no job holds.", ["runner"]
)
READ_MODEL_LAG: Final = Gauge(
    "swift_trainer_read_model_lag_events",
    "Stored events the read models served here have not applied yet.",
)

RUNNER_DRAINED: Final = Gauge(
    "swift_trainer_runner_drained",
    "1 for a runner an operator drained; the label says why.",
    ["runner", "reason"],
)
GPU_UNHEALTHY: Final = Gauge(
    "swift_trainer_gpu_unhealthy",
    "1 for a GPU out of placement as unhealthy; the label says why.",
    ["runner", "gpu", "uuid", "reason"],
)

_heartbeat = msgspec.json.Decoder(RunnerHeartbeat)


class MetricsEndpoint(PrometheusController):
    """Prometheus' text format at ``/metrics``, outside the API prefix and the OpenAPI docs."""

    path = METRICS_PATH
    include_in_schema = False


HTTP_REQUESTS: Final = Counter(
    "swift_trainer_http_requests_total",
    "Total requests",
    ["method", "path", "status_code", "app_name"],
)
HTTP_ERRORS: Final = Counter(
    "swift_trainer_http_requests_error_total",
    "Total errors in requests",
    ["method", "path", "status_code", "app_name"],
)
HTTP_DURATION: Final = Histogram(
    "swift_trainer_http_request_duration_seconds",
    "Request duration, in seconds",
    ["method", "path", "status_code", "app_name"],
)
HTTP_IN_PROGRESS: Final = Gauge(
    "swift_trainer_http_requests_in_progress",
    "Total requests currently in progress",
    ["method", "path", "status_code", "app_name"],
    multiprocess_mode="livesum",
)
_APP_NAME: Final = "swift-trainer"


class _RouteSeries:
    """The series of one method and route template, bound once and reused per request."""

    def __init__(self, method: str, template: str) -> None:
        self.labels = (method, template)
        self.in_progress = HTTP_IN_PROGRESS.labels(method, template, "200", _APP_NAME)
        self._by_status: dict[int, tuple[Counter, Histogram]] = {}

    def by_status(self, status: int) -> tuple[Counter, Histogram]:
        bound = self._by_status.get(status)
        if bound is None:
            values = (*self.labels, str(status), _APP_NAME)
            bound = self._by_status[status] = (
                HTTP_REQUESTS.labels(*values),
                HTTP_DURATION.labels(*values),
            )
        return bound


class HttpMetrics:
    """Route middleware: request count, errors, latency and in-flight per route template.

    The label children are bound once per method and status, so a request costs two
    timer reads, a dict lookup and the increments; a job id never becomes a label.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes: dict[tuple[str, str], _RouteSeries | None] = {}

    def _series(self, scope: Scope) -> _RouteSeries | None:
        method = scope["method"] if scope["type"] == ScopeType.HTTP else str(scope["type"])
        template = scope.get("path_template") or scope["path"]
        key = (method, template)
        if key not in self._routes:
            metered = template != METRICS_PATH
            self._routes[key] = _RouteSeries(method, template) if metered else None
        return self._routes[key]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        series = self._series(scope) if scope["type"] in _METERED else None
        if series is None:
            await self.app(scope, receive, send)
            return
        status = 200
        started = time.perf_counter()
        ended = 0.0

        async def metered_send(message: Message) -> None:
            nonlocal status, ended
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                ended = time.perf_counter()
            await send(message)

        series.in_progress.inc()
        try:
            await self.app(scope, receive, metered_send)
        finally:
            series.in_progress.dec()
            count, duration = series.by_status(status)
            if status >= HTTP_500_INTERNAL_SERVER_ERROR:
                HTTP_ERRORS.labels(*series.labels, str(status), _APP_NAME).inc()
            count.inc()
            duration.observe((ended or time.perf_counter()) - started)


_METERED: Final = frozenset({ScopeType.HTTP, ScopeType.WEBSOCKET})


async def sample_fleet(read_model: ReadModel, *, now: datetime, lease_s: float) -> None:
    """Set the job, runner and GPU gauges from the read models as they stand."""
    counts = await read_model.count_by_status()
    for status in JobStatus:
        if status not in (JobStatus.NEW, JobStatus.DELETED):
            JOBS.labels(status=status.value).set(counts.get(status, 0))
    holders = await gpu_holders(read_model)
    snapshots = await read_model.runner_snapshots()
    GPUS_TOTAL.clear()  # a runner that left must not linger with its last values
    GPUS_FREE.clear()
    alive = 0
    for snapshot in snapshots:
        if (now - snapshot.seen_at).total_seconds() > lease_s:
            continue
        try:
            heartbeat = _heartbeat.decode(snapshot.data)
        except msgspec.MsgspecError:
            continue
        alive += 1
        indexes = [gpu.index for gpu in heartbeat.inventory.gpus]
        held = sum(1 for index in indexes if (snapshot.runner_id, index) in holders)
        GPUS_TOTAL.labels(runner=snapshot.runner_id).set(len(indexes))
        GPUS_FREE.labels(runner=snapshot.runner_id).set(len(indexes) - held)
    RUNNERS_ALIVE.set(alive)
    fleet = (await read_model.queue_view()).fleet
    RUNNER_DRAINED.clear()
    for drain in fleet.drained:
        RUNNER_DRAINED.labels(runner=drain.runner_id, reason=drain.reason[:200]).set(1)
    GPU_UNHEALTHY.clear()
    for gpu in fleet.unhealthy_gpus:
        reason = "; ".join(gpu.reasons)[:200]
        labels = {"runner": gpu.runner_id, "gpu": str(gpu.index), "uuid": gpu.uuid}
        GPU_UNHEALTHY.labels(**labels, reason=reason).set(1)


async def sample_read_models(
    read_model: ReadModel,
    *,
    head: Callable[[], Awaitable[int]] | None,
    lease_s: float,
    interval_s: float,
    clock: Clock = utc_now,
) -> None:
    """Every ``interval_s``: the fleet gauges and, given the store's head, the read-model lag."""
    while True:
        try:
            await sample_fleet(read_model, now=clock(), lease_s=lease_s)
            if head is not None:
                lag = await head() - await read_model.applied_position()
                READ_MODEL_LAG.set(max(lag, 0))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a sampler never takes its process down
            _log.debug("cannot sample the read models: %r", exc)
        await asyncio.sleep(interval_s)
