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
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.aio.client import Client

from .bus.command_handler import CommandHandler
from .bus.connection import connect, provision
from .bus.embedded import EmbeddedNatsServer
from .bus.relay import OutboxRelay
from .core.settings import Settings
from .core.sqlstore import SqlEventStore, open_event_store
from .core.telemetry import setup_tracing

_log = logging.getLogger(__name__)

Stopper = Callable[[], Awaitable[None]]


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
        await provision(self.nc.jetstream())
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
        self.handler = CommandHandler(self.store)
        await self.handler.start(self.nc)
        self._stoppers.append(("command handler", self.handler.stop))
        return self.handler

    async def start_relay(self) -> OutboxRelay:
        assert self.nc is not None and self.store is not None
        self.relay = OutboxRelay(self.store, self.nc)
        await self.relay.start()
        self._stoppers.append(("outbox relay", self.relay.stop))
        return self.relay

    def add_stopper(self, name: str, stopper: Stopper) -> None:
        self._stoppers.append((name, stopper))

    async def stop(self) -> None:
        while self._stoppers:
            name, stopper = self._stoppers.pop()
            try:
                await asyncio.wait_for(stopper(), 30)
            except Exception:
                _log.exception("stopping %s failed", name)
            else:
                _log.debug("stopped %s", name)
