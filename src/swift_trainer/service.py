"""The composition root: every process kind is assembled here, and only here.

``Service`` starts parts in dependency order and stops them in reverse, so Ctrl-C never
leaves a half-published batch or an orphaned child. The ``run_*`` functions are the
processes; the ``cli`` package parses arguments and calls them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import msgspec
import uvicorn
from nats.aio.client import Client
from prometheus_client import start_http_server

from .api.auth.exposure import check_exposure, warn_insecure
from .bus.command_handler import CommandHandler
from .bus.connection import connect, provision, resolve_nats_url
from .bus.embedded import EmbeddedNatsServer
from .bus.metrics import observe_command, sample_relay_lag
from .bus.relay import OutboxRelay, RelayNudge
from .core.errors import SwiftTrainerError
from .core.gc_pause import settle_heap
from .core.settings import Settings
from .core.shutdown import catch_shutdown_signals, wait_for_shutdown
from .core.sqlstore import SqlEventStore, open_event_store
from .core.telemetry import setup_tracing
from .projections.experiments.experiments_service import ExperimentsService
from .projections.log_feed import LogFeed
from .projections.read_model_service import ReadModelService
from .projections.read_models.interface import ReadModel
from .projections.read_models.memory import MemoryReadModel
from .projections.read_models.redis import RedisReadModel
from .projections.runner_feed import RunnerFeed
from .projections.scheduler.job_watch import WatchLimits
from .projections.scheduler.pass_result import PassResult
from .projections.scheduler.preemption import PreemptionPolicy
from .projections.scheduler.service import SchedulerOptions, SchedulerService
from .projections.scheduler.telemetry import SchedulerTelemetry
from .runner.agent import RunnerAgent
from .runner.factory import RunnerOptions, create_runner_agent

_log = logging.getLogger(__name__)

Stopper = Callable[[], Awaitable[None]]

#: Seconds between samples of the gauges that are read, not counted (lags, fleet).
METRICS_SAMPLE_S = 2.0


class Service:
    """Starts parts in order and stops them in reverse; each part registers its stopper."""

    def __init__(self, settings: Settings, *, name: str = "swift-trainer") -> None:
        self.settings = settings
        self.name = name
        self.nats: EmbeddedNatsServer | None = None
        self.nc: Client | None = None
        self.store: SqlEventStore | None = None
        self.handler: CommandHandler | None = None
        self.relay: OutboxRelay | None = None
        self.read_model: ReadModel | None = None
        self.read_model_service: ReadModelService | None = None
        self.log_feed: LogFeed | None = None
        self.experiments: ExperimentsService | None = None
        self.http: _EmbeddedHttpServer | None = None
        self._stoppers: list[tuple[str, Stopper]] = []
        self.failed = asyncio.Event()
        #: Set by SIGINT or SIGTERM once the process caught them (before it is reachable).
        self.signals: asyncio.Event | None = None

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.data_dir)

    @property
    def nats_url_file(self) -> Path:
        return self.data_dir / "nats.url"

    async def start_nats(
        self,
        *,
        url: str | None = None,
        embedded_port: int | None = None,
        runner_lease_s: float = 15.0,
        scheduler_lease_s: float = 5.0,
    ) -> Client:
        """Connect to ``url``, else ``NATS_URL``, else start the embedded server; then make
        sure the streams and buckets exist (the leases set a bucket's TTL when it is new)."""
        setup_tracing(self.name)
        url = url or self.settings.nats_url
        if url is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.nats = EmbeddedNatsServer(self.data_dir / "nats", port=embedded_port)
            await self.nats.start()
            self._stoppers.append(("nats-server", self.nats.stop))
            url = self.nats.url
            self.nats_url_file.write_text(url + "\n", encoding="utf-8")
            _log.info(
                "embedded nats-server listening on %s (JetStream in %s)", url, self.nats.store_dir
            )
            asyncio.create_task(self._watch_nats(self.nats))  # noqa: RUF006 - ends with the server
        self.nc = await connect(url, self.settings, name=self.name)
        self._stoppers.append(("nats connection", self._close_nc))
        await provision(
            self.nc.jetstream(),
            runner_lease_s=runner_lease_s,
            scheduler_lease_s=scheduler_lease_s,
            replicas=self.settings.nats_stream_replicas,
        )
        return self.nc

    async def _watch_nats(self, server: EmbeddedNatsServer) -> None:
        await server.failed.wait()
        _log.critical("the embedded nats-server cannot be kept running; shutting down")
        self.failed.set()

    async def _close_nc(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    async def start_store(self) -> SqlEventStore:
        url = self.settings.resolved_event_store_url
        if url.startswith("sqlite"):
            self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = open_event_store(url)
        await self.store.setup()
        self._stoppers.append(("event store", self.store.close))
        return self.store

    async def start_handler(self) -> CommandHandler:
        """The command handler and the outbox relay beside it.

        After each append, in this order: this process's relay gets the stored events
        (no read back), then the relays of other processes are woken over NATS.
        """
        assert self.nc is not None and self.store is not None
        self.relay = relay = OutboxRelay(self.store, self.nc)
        self.handler = CommandHandler(
            self.store,
            after_append=[relay.offer_appended, RelayNudge(self.nc, origin=relay.origin)],
            observer=observe_command,
        )
        await self.handler.start(self.nc)
        self._stoppers.append(("command handler", self.handler.stop))
        await relay.start()
        self._stoppers.append(("outbox relay", relay.stop))
        self.add_background(
            "relay-lag sampler", sample_relay_lag(self.store, relay, METRICS_SAMPLE_S)
        )
        return self.handler

    async def start_read_model(self, *, follow: bool = True) -> ReadModel:
        """Redis when configured (shared by API processes), else in memory (embedded)."""
        if self.settings.redis_url:
            self.read_model = RedisReadModel.from_url(
                self.settings.redis_url,
                prefix=self.settings.redis_prefix,
            )
        else:
            self.read_model = MemoryReadModel()
        self._stoppers.append(("read model", self.read_model.close))
        if follow:
            assert self.nc is not None
            self.read_model_service = ReadModelService(self.nc, self.read_model, store=self.store)
            await self.read_model_service.start()
            self._stoppers.append(("read-model projection", self.read_model_service.stop))
            self.log_feed = LogFeed(self.nc, self.read_model)
            await self.log_feed.start()
            self._stoppers.append(("log feed", self.log_feed.stop))
            runner_feed = RunnerFeed(self.nc, self.read_model)
            await runner_feed.start()
            self._stoppers.append(("runner feed", runner_feed.stop))
        return self.read_model

    async def start_http(
        self, app: object, *, host: str | None = None, port: int | None = None
    ) -> int:
        """Serve an ASGI app in this process; returns the bound port."""
        config = uvicorn.Config(
            app,  # type: ignore[arg-type]
            host=host or self.settings.app_host,
            port=self.settings.app_port if port is None else port,
            lifespan="on",
            log_level=self.settings.log_level.lower(),
            access_log=False,
            # uvicorn's records go through the root logger, so LOG_FORMAT=json covers them.
            log_config=None,
        )
        self.http = _EmbeddedHttpServer(config)
        bound = await self.http.start()
        self._stoppers.append(("http server", self.http.stop))
        return bound

    async def start_api(
        self,
        *,
        process_queue: Callable[[], Awaitable[PassResult]] | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> int:
        """The HTTP API over this process's NATS connection and read model."""
        from .api.app import create_app
        from .api.deps import (
            ApiDeps,
            combine_checks,
            event_store_check,
            nats_check,
            nats_subscriber,
            no_scheduler,
            read_model_check,
        )
        from .bus.command_client import CommandClient
        from .bus.file_store import FileStore
        from .bus.local_commands import LocalCommandClient

        assert self.nc is not None and self.read_model is not None
        checks = {"nats": nats_check(self.nc), "read_model": read_model_check(self.read_model)}
        if self.store is not None:
            checks["event_store"] = event_store_check(self.store)
        access = None
        if self.settings.api_auth == "required":
            from .projections.access_view import AccessFollower

            follower = AccessFollower(self.nc)
            await follower.start(timeout=self.settings.command_timeout_s * 3)
            self._stoppers.append(("access view", follower.stop))
            access = follower.view
        usage = None
        webhooks = None
        if self.store is not None:
            from .api.deps import WebhookAccess
            from .projections.webhook_dispatcher import load_signing_key

            webhooks = WebhookAccess(self.store, load_signing_key(self.settings))
            from .api.usage.metrics import count_gpu_seconds
            from .projections.usage_view import UsageView

            usage = UsageView(self.store)
            # Keeps the fold warm (a report folds only what came since) and the counter set.
            self.add_background("usage fold", count_gpu_seconds(usage, METRICS_SAMPLE_S))
        # A handler in this process takes the API's commands directly (no NATS round trip).
        commands = (
            LocalCommandClient(
                self.nc, self.handler, timeout=self.settings.command_timeout_s, actor="api"
            )
            if self.handler is not None
            else CommandClient(self.nc, timeout=self.settings.command_timeout_s, actor="api")
        )
        deps = ApiDeps(
            access=access,
            write_rate=self.settings.api_write_rate,
            write_burst=self.settings.api_write_burst,
            commands=commands,
            read_model=self.read_model,
            readiness=combine_checks(**checks),
            process_queue=process_queue or no_scheduler,
            subscribe=nats_subscriber(self.nc),
            output_root=self.settings.output_root,
            wait_applied=(
                self.read_model_service.wait_applied if self.read_model_service else None
            ),
            files=FileStore(self.nc.jetstream()),
            files_max_bytes=self.settings.files_max_bytes,
            auto_export=self.settings.auto_export,
            usage=usage,
            experiments=self.experiments,
            webhooks=webhooks,
        )
        app = create_app(deps, api_prefix=self.settings.api_prefix)
        port = await self.start_http(app, host=host, port=port)
        from .api.metrics import sample_read_models

        store = self.store
        self.add_background(
            "read-model sampler",
            sample_read_models(
                self.read_model,
                head=store.last_position if store is not None else None,
                lease_s=deps.runner_lease_s,
                interval_s=METRICS_SAMPLE_S,
            ),
        )
        return port

    async def start_scheduler(
        self, options: SchedulerOptions | None = None, *, publish_queue_view: bool = False
    ) -> SchedulerService:
        """A scheduler on this process's NATS (and store, when it has one); with
        ``publish_queue_view`` it writes the queue view into this process's read model."""
        assert self.nc is not None
        options = options or SchedulerOptions()
        sink = None
        if publish_queue_view:
            assert self.read_model is not None
            sink = self.read_model.set_queue_view
        settings = self.settings
        preemption = PreemptionPolicy(
            enabled=settings.scheduler_preemption,
            min_runtime_s=settings.preempt_min_runtime_s,
            max_per_hour=settings.preempt_max_per_hour,
            grace_s=settings.preempt_grace_s,
        )
        scheduler = SchedulerService(
            self.nc,
            msgspec.structs.replace(options, preemption=preemption),
            queue_view_sink=sink,
            store=self.store,
            command_timeout_s=self.settings.command_timeout_s,
            watch_limits=WatchLimits(
                resume_check_s=self.settings.resume_check_s,
                idle_warn_s=self.settings.idle_gpu_warn_s,
                idle_util_pct=self.settings.idle_gpu_util_pct,
                idle_stop_s=self.settings.idle_gpu_stop_s,
            ),
            stream_replicas=self.settings.nats_stream_replicas,
            observer=SchedulerTelemetry(),
        )
        await scheduler.start()
        self._stoppers.append(("scheduler", scheduler.stop))
        return scheduler

    async def start_experiments(self, *, acting: bool = True) -> ExperimentsService:
        """Dependency release and sweeps (``acting``), or only their view for an API."""
        assert self.nc is not None
        self.experiments = ExperimentsService(
            self.nc,
            store=self.store,
            command_timeout_s=self.settings.command_timeout_s,
            acting=acting,
        )
        await self.experiments.start()
        self._stoppers.append(("experiments", self.experiments.stop))
        return self.experiments

    async def start_runner(self, options: RunnerOptions) -> RunnerAgent:
        assert self.nc is not None
        agent = create_runner_agent(
            self.nc, options, command_timeout_s=self.settings.command_timeout_s
        )
        await agent.start()
        self._stoppers.append(("runner", agent.stop))
        return agent

    async def start_webhooks(self) -> None:
        """The webhook dispatcher, which reads the store (so only where the store is)."""
        from .projections.webhook_dispatcher import WebhookDispatcher, load_signing_key

        assert self.store is not None
        webhooks = WebhookDispatcher(self.store, load_signing_key(self.settings))
        await webhooks.start()
        self._stoppers.append(("webhooks", webhooks.stop))

    def add_background(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        """A loop that runs until the service stops (samplers); it is cancelled then."""
        task = asyncio.create_task(work, name=name)

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self._stoppers.append((name, stop))

    def add_stopper(self, name: str, stopper: Stopper) -> None:
        self._stoppers.append((name, stopper))

    async def stop(self) -> None:
        while self._stoppers:
            name, stopper = self._stoppers.pop()
            try:
                async with asyncio.timeout(30):
                    await stopper()
            except Exception:
                _log.exception("stopping %s failed", name)
            else:
                _log.debug("stopped %s", name)


class _EmbeddedHttpServer(uvicorn.Server):
    """uvicorn inside our event loop; the process's signal handling stays ours."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def start(self) -> int:
        self._task = asyncio.create_task(self.serve(), name="http")
        while not self.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.02)
        sockets = [sock for server in self.servers for sock in server.sockets]
        port: int = sockets[0].getsockname()[1] if sockets else self.config.port
        return port

    async def stop(self) -> None:
        self.should_exit = True
        await self._task


# --- the processes --------------------------------------------------------------------------


def serve_metrics(settings: Settings, port: int) -> None:
    """Prometheus' ``/metrics`` on its own port, from a daemon thread of ``prometheus-client``
    (it ends with the process), for components that have no HTTP API of their own."""
    try:
        start_http_server(port, addr=settings.app_host)
    except OSError as exc:
        raise SwiftTrainerError(f"cannot serve metrics on port {port}: {exc}") from exc
    _log.info("Prometheus metrics on %s:%d/metrics", settings.app_host, port)


def _needs_nats_url(settings: Settings, what: str) -> bool:
    if settings.nats_url is None:
        print(f"{what} needs NATS_URL (use 'up' for the embedded mode)", file=sys.stderr)  # noqa: T201
        return False
    return True


async def _serve_until_shutdown(service: Service) -> int:
    settle_heap()  # everything has started: what it built stays for the process's life
    await wait_for_shutdown(service.failed, stop=service.signals)
    return 1 if service.failed.is_set() else 0


async def run_up(settings: Settings, runner: RunnerOptions, *, nats_port: int | None = None) -> int:
    """Everything in one process: NATS, store, handler, relay, read models, webhooks, the
    scheduler, a local runner (simulated GPUs, or NVML) and the HTTP API."""
    insecure = check_exposure(settings)
    service = Service(settings, name="swift-trainer")
    try:
        await service.start_nats(embedded_port=nats_port)
        await service.start_store()
        await service.start_handler()
        await service.start_read_model()
        await service.start_webhooks()
        scheduler = await service.start_scheduler(publish_queue_view=True)
        await service.start_experiments()
        # Ctrl-C on the embedded service stops its training too (with a checkpoint), so no
        # process outlives it; a stand-alone runner leaves jobs running for re-attach.
        await service.start_runner(msgspec.structs.replace(runner, stop_jobs_on_exit=True))
        # Reachable from here on: a Ctrl-C as soon as it answers still stops it in order.
        service.signals = catch_shutdown_signals()
        port = await service.start_api(process_queue=scheduler.process_now)
        if insecure:
            service.add_background("insecure warning", warn_insecure(settings.app_host))
        if runner.simulate_gpus is None:
            _log.info("local runner uses NVML; pass --simulate-gpus N on a machine without GPUs")
        print(  # noqa: T201
            f"swift-trainer is up: http://{settings.app_host}:{port}/docs "
            f"(API under {settings.api_prefix}/training); press Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        return await _serve_until_shutdown(service)
    finally:
        await service.stop()


async def run_handler(settings: Settings) -> int:
    """Command handler and outbox relay (run as many as you like)."""
    if not _needs_nats_url(settings, "handler"):
        return 2
    service = Service(settings, name="swift-trainer-handler")
    try:
        await service.start_nats()
        await service.start_store()
        await service.start_handler()
        return await _serve_until_shutdown(service)
    finally:
        await service.stop()


async def run_scheduler(
    settings: Settings, options: SchedulerOptions, *, nats_url: str | None = None
) -> int:
    """One scheduler (run several: one leads). With ``EVENT_STORE_URL`` a new leader checks
    it has applied everything the store holds before acting; else the EVENTS stream."""
    if not (nats_url or _needs_nats_url(settings, "scheduler")):
        return 2
    service = Service(settings, name="swift-trainer-scheduler")
    try:
        await service.start_nats(url=nats_url, scheduler_lease_s=options.lease_ttl_s)
        if settings.event_store_url:
            await service.start_store()
        # The queue view goes where the API reads it (Redis); without it GET /queue and a
        # create's answer could never carry the scheduler's positions.
        if settings.redis_url:
            await service.start_read_model(follow=False)
        await service.start_scheduler(options, publish_queue_view=settings.redis_url is not None)
        await service.start_experiments()
        return await _serve_until_shutdown(service)
    finally:
        await service.stop()


async def run_runner(
    settings: Settings, options: RunnerOptions, *, nats_url: str | None = None
) -> int:
    """The agent of one GPU host; its training keeps running across its restarts unless
    ``--stop-jobs-on-exit``. Without ``NATS_URL`` it joins a local ``up``."""
    service = Service(settings, name=f"swift-trainer-runner-{options.runner_id}")
    try:
        await service.start_nats(
            url=resolve_nats_url(settings, nats_url),
            runner_lease_s=max(options.lease_s, 1.0) * 1.5,
        )
        await service.start_runner(options)
        return await _serve_until_shutdown(service)
    finally:
        _log.info("runner %s stopping", options.runner_id)
        await service.stop()


async def run_api(settings: Settings, *, projector: bool = True) -> int:
    """The HTTP API on its own: reads from Redis read models, writes as commands over NATS;
    ``projector=False`` for extra replicas that only serve."""
    from .projections.scheduler.process_requests import request_processing

    if not _needs_nats_url(settings, "api"):
        return 2
    insecure = check_exposure(settings)
    service = Service(settings, name="swift-trainer-api")
    try:
        nc = await service.start_nats()
        if settings.event_store_url:
            await service.start_store()
        await service.start_read_model(follow=projector)

        async def process_queue() -> PassResult:
            return await request_processing(nc)

        await service.start_experiments(acting=False)
        service.signals = catch_shutdown_signals()
        port = await service.start_api(process_queue=process_queue)
        if insecure:
            service.add_background("insecure warning", warn_insecure(settings.app_host))
        _log.info("API listening on %s:%d", settings.app_host, port)
        return await _serve_until_shutdown(service)
    finally:
        await service.stop()


async def run_rebuild(settings: Settings, *, drop_feeds: bool = False) -> int:
    """``projections rebuild``: wipe the Redis read models and replay the event store."""
    from .projections.read_models.replay import rebuild

    if settings.redis_url is None:
        print(  # noqa: T201
            "error: no Redis configured (REDIS_URL or REDIS_HOST): the embedded in-memory read "
            "models are rebuilt from the event store every time 'up' starts",
            file=sys.stderr,
        )
        return 2
    service = Service(settings, name="swift-trainer-projections")
    try:
        store = await service.start_store()
        read_model = await service.start_read_model(follow=False)
        before = await read_model.applied_position()
        applied = await rebuild(store, read_model, keep_feeds=not drop_feeds)
        after = await read_model.applied_position()
    finally:
        await service.stop()
    print(  # noqa: T201
        json.dumps(
            {
                "rebuilt": True,
                "events_applied": applied,
                "position_before": before,
                "position": after,
            }
        ),
    )
    return 0
