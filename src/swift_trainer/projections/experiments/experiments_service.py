"""The experiments process manager: folds the event log and sends what it calls for.

It releases waiting jobs (``dependency_release``) and drives sweeps (``sweep_driver``).
On start it folds the event store when one is at hand, else the ``EVENTS`` stream from its
beginning, and acts only once caught up; then it follows ``EVENTS``. Nothing it waits for
lives in memory alone: a restart folds the same log and asks for the same commands under
the same command ids, which the handler answers with their first outcome. Any number of
copies may run (one per scheduler process); they send the same commands.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Final, Protocol

from nats.aio.client import Client

from swift_trainer.bus.command_client import CommandClient
from swift_trainer.bus.feed import EventFeed
from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.errors import MessageError
from swift_trainer.core.store import RecordedEvent
from swift_trainer.core.tasks import cancel_and_wait

from .dependency_release import DependencyState
from .sweep_driver import SweepDriver

_log = logging.getLogger(__name__)

#: How often commands that did not take effect are sent again.
RETRY_S: Final = 2.0
ACTOR: Final = "experiments"


class EventLog(Protocol):
    async def read_all(
        self, *, after_position: int = 0, limit: int = 1000
    ) -> list[RecordedEvent]: ...


class ExperimentsService:
    """Dependency release and sweep driving for one process; see the module docstring."""

    def __init__(
        self,
        nc: Client,
        *,
        store: EventLog | None = None,
        command_timeout_s: float = 10.0,
        retry_s: float = RETRY_S,
        acting: bool = True,
    ) -> None:
        self.nc = nc
        self.store = store
        self.client = CommandClient(nc, timeout=command_timeout_s, actor=ACTOR)
        self.retry_s = retry_s
        #: False: only fold (an API's view of the sweeps); True: also send the commands.
        self.acting = acting
        self.dependencies = DependencyState()
        self.sweeps = SweepDriver()
        self.position = 0
        self.feed: EventFeed | None = None
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._advanced = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        #: Command id -> when it was last sent; a command is sent again after ``retry_s``.
        self._sent: dict[str, float] = {}

    def apply(self, events: Sequence[RecordedEvent]) -> None:
        """Fold stored events (redeliveries below the applied position are skipped)."""
        for recorded in events:
            if recorded.position <= self.position:
                continue
            self.position = recorded.position
            if self.sweeps.apply_recorded(recorded):
                continue
            try:
                event = e.decode_event(recorded.type, recorded.payload, recorded.schema_version)
            except MessageError:
                continue  # access, webhook and unknown streams are no experiment's business
            self.dependencies.apply(event, recorded.version)
            self.sweeps.apply_job_event(event)
        self._wake.set()

    async def _on_batch(self, events: Sequence[RecordedEvent]) -> None:
        self.apply(events)
        async with self._advanced:
            self._advanced.notify_all()

    async def wait_applied(self, position: int, timeout: float) -> bool:
        """Wait until the fold has applied ``position``; False after ``timeout``."""
        try:
            async with asyncio.timeout(timeout), self._advanced:
                await self._advanced.wait_for(lambda: self.position >= position)
        except TimeoutError:
            return False
        return True

    async def start(self) -> None:
        if self.store is not None:
            while batch := await self.store.read_all(after_position=self.position, limit=5000):
                self.apply(batch)
        self.feed = EventFeed(
            self.nc, self._on_batch, after_position=self.position, name="experiments"
        )
        await self.feed.start()
        self._task = asyncio.create_task(self._run(), name="experiments")

    async def _run(self) -> None:
        assert self.feed is not None
        await self.feed.caught_up.wait()
        self._ready.set()
        while self.acting:
            self._wake.clear()
            try:
                await self.act()
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("experiments: acting failed; trying again")
            try:
                async with asyncio.timeout(self.retry_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def act(self) -> None:
        """Send every command the folded state calls for that is not already under way."""
        now = time.monotonic()
        wanted: list[tuple[c.AnyCommand, str]] = [
            (a.command, a.command_id) for a in self.dependencies.actions()
        ]
        wanted.extend((a.command, a.command_id) for a in self.sweeps.actions())
        live = {command_id for _, command_id in wanted}
        for command_id in [k for k in self._sent if k not in live]:
            del self._sent[command_id]
        due = [(cmd, cid) for cmd, cid in wanted if now - self._sent.get(cid, -1e9) >= self.retry_s]
        for _, command_id in due:
            self._sent[command_id] = now
        await asyncio.gather(*(self._send(cmd, cid) for cmd, cid in due))

    async def _send(self, command: c.AnyCommand, command_id: str) -> None:
        try:
            reply = await self.client.send(command, command_id=command_id)
        except Exception as exc:
            _log.warning("experiments: could not send %s: %r", type(command).__name__, exc)
            return
        if not reply.ok and reply.error is not None:
            _log.info(
                "experiments: %s %s refused: %s",
                type(command).__name__,
                command_id,
                reply.error.message,
            )
            self.sweeps.refused(command_id, reply.error.code)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            await self._ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self.feed is not None:
            await self.feed.stop()
            self.feed = None
