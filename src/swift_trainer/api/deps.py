"""What the HTTP API needs from the rest of the system, as one bundle of small protocols.

The API owns no connection: the composition root (``swift-trainer up`` or a test) hands it
a command sender, a read model and a few callables, so the same app runs embedded, in
compose, or against fakes. Each callable has a default that tells the truth about its
absence (no scheduler connected, no live feed) instead of pretending.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

import msgspec
from litestar.di import NamedDependency
from nats.aio.client import Client

from ..bus.file_store import FileStore
from ..bus.messages import CommandReply
from ..core.clock import Clock, utc_now
from ..core.commands import AnyCommand
from ..core.settings import DEFAULT_FILES_MAX_BYTES
from ..core.sqlstore import SqlEventStore
from ..core.store import EventStore
from ..core.tasks import unsubscribe_quietly
from ..projections.access_view import AccessView
from ..projections.experiments.experiments_service import ExperimentsService
from ..projections.read_models.interface import ReadModel
from ..projections.scheduler.pass_result import PassResult, not_processed
from ..projections.usage_view import UsageView


class CommandSender(Protocol):
    """``bus.command_client.CommandClient`` fits; raises ``CommandUnavailable`` on timeout."""

    async def send(
        self,
        command: AnyCommand,
        *,
        command_id: str | None = None,
        actor: str | None = None,
    ) -> CommandReply: ...


#: Dependency name -> True (up), or False / a reason string (down). A check that does not
#: apply to this deployment is left out of the dict.
ReadinessCheck = Callable[[], Awaitable[dict[str, bool | str]]]
#: "Run one placement pass now"; the scheduler answers with what it did.
QueueTrigger = Callable[[], Awaitable[PassResult]]
#: Core-NATS messages on a subject (wildcards allowed), for as long as the iterator is open.
Subscriber = Callable[[str], AsyncIterator[bytes]]
#: The most GPUs any known runner has, or None when no runner is known.
GpuCapacity = Callable[[], int | Awaitable[int | None] | None]


async def no_scheduler() -> PassResult:
    """The trigger of an API that has no scheduler to ask."""
    return not_processed("no scheduler is connected to this API; queued jobs wait for one")


@dataclass(frozen=True)
class WebhookAccess:
    """What registering a webhook needs: the store (it is an event) and the signing key."""

    store: SqlEventStore
    signing_key: bytes


@dataclass(frozen=True, kw_only=True)
class ApiDeps:
    commands: CommandSender
    read_model: ReadModel
    readiness: ReadinessCheck | None = None
    process_queue: QueueTrigger = no_scheduler
    #: None: live streams (SSE) poll the read model only, every ``stream_poll_s``.
    subscribe: Subscriber | None = None
    #: Where job output lands on this host: the disk the system status reports.
    output_root: str = "output"
    #: None: worked out from the runners' heartbeats in the read model.
    max_gpus_per_host: GpuCapacity | None = None
    #: A runner not heard from for this long is shown as not alive (the NATS lease).
    runner_lease_s: float = 15.0
    #: Actor recorded on the commands this API sends.
    actor: str | None = "api"
    #: How long a write waits for the read model to show it (0: answer at once).
    read_your_writes_s: float = 1.0
    #: ``(position, timeout) -> applied?`` from the projection in this process; without it
    #: the wait polls the read model.
    wait_applied: Callable[[int, float], Awaitable[bool]] | None = None
    stream_poll_s: float = 1.0
    stream_heartbeat_s: float = 15.0
    #: A log stream of a finished job ends this long after it finished (late lines land).
    stream_end_grace_s: float = 2.0
    #: How long a readiness probe may take before it counts as failed.
    readiness_timeout_s: float = 5.0
    clock: Clock = field(default=utc_now)

    #: Registering webhooks over HTTP (``/webhooks``); None: those routes answer 503.
    webhooks: WebhookAccess | None = None
    #: The usage fold of the event store (``GET /usage``); None: it answers 503.
    usage: UsageView | None = None
    #: Uploaded datasets (``/v1/files``); None: the files endpoints answer 503.
    files: FileStore | None = None
    #: Largest upload accepted (``FILES_MAX_BYTES``).
    files_max_bytes: int = DEFAULT_FILES_MAX_BYTES
    #: Jobs created through ``/v1`` merge their LoRA adapter after success (``AUTO_EXPORT``).
    auto_export: bool = True

    #: Valid API keys and quotas (``projections.access``); None: authentication is off.
    access: AccessView | None = None
    #: Writes per second per API key (bursts of ``write_burst``); 0: unlimited.
    write_rate: float = 5.0
    write_burst: int = 20
    #: The sweeps and their trials, folded in this process; None: the sweep routes answer 503.
    experiments: ExperimentsService | None = None

    #: How long the largest runner's GPU count is reused between creates.
    capacity_cache_s: float = 5.0
    _capacity: list[tuple[float, int | None]] = field(default_factory=list, repr=False)

    async def gpu_capacity(self) -> int | None:
        """The largest runner's GPU count, cached briefly: reading every runner snapshot on
        every create would cost more than the create itself (profiled)."""
        now = time.monotonic()
        if self._capacity and now - self._capacity[0][0] < self.capacity_cache_s:
            return self._capacity[0][1]
        if self.max_gpus_per_host is None:
            value = await largest_runner(self.read_model)
        else:
            found = self.max_gpus_per_host()
            value = await found if inspect.isawaitable(found) else found
        self._capacity[:] = [(now, value)]
        return value


#: How handlers ask for the bundle (the app provides it under the name ``deps``).
Deps: TypeAlias = NamedDependency[ApiDeps]


class _GpuList(msgspec.Struct):
    gpus: list[Any] = []


class _Heartbeat(msgspec.Struct):
    inventory: _GpuList | None = None
    gpus: list[Any] = []


_heartbeat = msgspec.json.Decoder(_Heartbeat)


def gpus_in_snapshot(data: bytes) -> list[Any] | None:
    """The GPUs of a runner heartbeat (nested in its inventory, or at the top), or None
    when the blob is not one."""
    try:
        decoded = _heartbeat.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return decoded.inventory.gpus if decoded.inventory is not None else decoded.gpus


class _Labelled(msgspec.Struct):
    labels: dict[str, str] = {}


async def matching_runner_sizes(
    read_model: ReadModel, host_labels: Mapping[str, str]
) -> list[int] | None:
    """GPU counts of the runners ever heard from that carry ``host_labels``; None when no
    runner has reported a GPU at all (nothing is known yet)."""
    sizes: list[int] = []
    known = False
    for snapshot in await read_model.runner_snapshots():
        gpus = gpus_in_snapshot(snapshot.data)
        if not gpus:
            continue
        known = True
        try:
            labels = msgspec.json.decode(snapshot.data, type=_Labelled).labels
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if all(labels.get(key) == value for key, value in host_labels.items()):
            sizes.append(len(gpus))
    return sizes if known else None


async def largest_runner(read_model: ReadModel) -> int | None:
    """GPU count of the biggest runner ever heard from (dead ones too: they may return)."""
    # A runner that sees no GPU at all (no driver, NVML failing) says nothing about what
    # could run: it must not make every job unsatisfiable.
    counts = [
        len(gpus)
        for snapshot in await read_model.runner_snapshots()
        if (gpus := gpus_in_snapshot(snapshot.data))
    ]
    return max(counts) if counts else None


# --- adapters the composition root can use --------------------------------------------------


def nats_subscriber(nc: Client) -> Subscriber:
    """Core-NATS subscriptions for live streams; unsubscribed when the consumer closes."""

    async def subscribe(subject: str) -> AsyncIterator[bytes]:
        subscription = await nc.subscribe(subject, pending_msgs_limit=4096)
        try:
            async for msg in subscription.messages:
                yield msg.data
        finally:
            await unsubscribe_quietly(subscription)

    return subscribe


def nats_check(nc: Client) -> Callable[[], Awaitable[bool | str]]:
    async def check() -> bool | str:
        if not nc.is_connected:
            return "not connected"
        await nc.flush(timeout=2)
        return True

    return check


def event_store_check(store: EventStore) -> Callable[[], Awaitable[bool | str]]:
    async def check() -> bool | str:
        await store.last_position()
        return True

    return check


def read_model_check(read_model: ReadModel) -> Callable[[], Awaitable[bool | str]]:
    async def check() -> bool | str:
        await read_model.applied_position()
        return True

    return check


def combine_checks(**checks: Callable[[], Awaitable[bool | str]]) -> ReadinessCheck:
    """Run named checks concurrently; one that raises reports its error instead of True."""

    async def run_one(check: Callable[[], Awaitable[bool | str]]) -> bool | str:
        try:
            return await check()
        except Exception as exc:  # a readiness probe reports failures, it never raises
            return f"{type(exc).__name__}: {exc}"

    async def readiness() -> dict[str, bool | str]:
        names = list(checks)
        results = await asyncio.gather(*(run_one(checks[name]) for name in names))
        return dict(zip(names, results, strict=True))

    return readiness
