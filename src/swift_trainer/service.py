"""The composition root: which parts run in this process, wired to one NATS and one store.

``swift-trainer up`` runs every part in one process (the embedded mode); the separate
entry points run one part each against shared NATS / PostgreSQL / Redis. Parts start in
dependency order and stop in reverse, so Ctrl-C never leaves a half-published batch or an
orphaned child.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from nats.aio.client import Client

from .bus.command_handler import CommandHandler
from .bus.connection import connect, provision
from .bus.embedded import EmbeddedNatsServer
from .bus.metrics import MeteredCommandHandler, sample_relay_lag
from .bus.relay import OutboxRelay
from .core.settings import Settings
from .core.sqlstore import SqlEventStore, open_event_store
from .core.telemetry import setup_tracing
from .projections.log_feed import LogFeed
from .projections.read_model_service import ReadModelService
from .projections.read_models.interface import ReadModel
from .projections.read_models.memory import MemoryReadModel
from .projections.read_models.redis import RedisReadModel
from .projections.runner_feed import RunnerFeed
from .projections.scheduler.pass_result import PassResult

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
        self.http: _EmbeddedHttpServer | None = None
        self._stoppers: list[tuple[str, Stopper]] = []
        self.failed = asyncio.Event()

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.data_dir)

    @property
    def nats_url_file(self) -> Path:
        return self.data_dir / "nats.url"

    async def start_nats(self, *, embedded_port: int | None = None) -> Client:
        setup_tracing(self.name)
        url = self.settings.nats_url
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
        await provision(self.nc.jetstream(), replicas=self.settings.nats_stream_replicas)
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
        assert self.nc is not None and self.store is not None
        self.handler = MeteredCommandHandler(self.store)
        await self.handler.start(self.nc)
        self._stoppers.append(("command handler", self.handler.stop))
        return self.handler

    async def start_relay(self) -> OutboxRelay:
        assert self.nc is not None and self.store is not None
        self.relay = OutboxRelay(self.store, self.nc)
        await self.relay.start()
        self._stoppers.append(("outbox relay", self.relay.stop))
        self.add_background(
            "relay-lag sampler", sample_relay_lag(self.store, self.relay, METRICS_SAMPLE_S)
        )
        return self.relay

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

        assert self.nc is not None and self.read_model is not None
        checks = {"nats": nats_check(self.nc), "read_model": read_model_check(self.read_model)}
        if self.store is not None:
            checks["event_store"] = event_store_check(self.store)
        access = None
        if self.settings.api_auth == "required":
            from .projections.access import AccessFollower

            follower = AccessFollower(self.nc)
            await follower.start(timeout=self.settings.command_timeout_s * 3)
            self._stoppers.append(("access view", follower.stop))
            access = follower.view
        deps = ApiDeps(
            access=access,
            write_rate=self.settings.api_write_rate,
            write_burst=self.settings.api_write_burst,
            commands=CommandClient(self.nc, timeout=self.settings.command_timeout_s, actor="api"),
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
