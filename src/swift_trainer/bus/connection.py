"""Connecting to NATS with the deployment's settings, and provisioning what we use.

Provisioning is idempotent: every process may call it at start (create, or update to the
config this code wants), so there is no separate migration step for NATS.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    BadRequestError,
    NoStreamResponseError,
    NotFoundError,
    ServerError,
    ServiceUnavailableError,
)

from ..core.errors import SwiftTrainerError
from ..core.settings import Settings
from . import subjects
from .file_store import ensure_file_bucket

_log = logging.getLogger(__name__)

T = TypeVar("T")

DAY = 24 * 3600.0


def resolve_nats_url(settings: Settings, explicit: str | None = None) -> str:
    """The NATS to talk to: ``--nats-url``, else ``NATS_URL``, else the one a local
    ``swift-trainer up`` started (it writes its URL to ``<data dir>/nats.url``)."""
    if explicit:
        return explicit
    if settings.nats_url:
        return settings.nats_url
    url_file = Path(settings.data_dir) / "nats.url"
    if url_file.is_file():
        return url_file.read_text(encoding="utf-8").strip()
    raise SwiftTrainerError(
        "no NATS to talk to: set NATS_URL, pass --nats-url, or run 'swift-trainer up' on this "
        f"machine first (it writes {url_file})",
        code="no_nats",
    )


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS to NATS when a CA or a client certificate is configured (mutual TLS with both)."""
    if not (settings.nats_tls_ca or settings.nats_tls_cert):
        return None
    try:
        context = ssl.create_default_context(cafile=settings.nats_tls_ca)
        if settings.nats_tls_cert:
            context.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise SwiftTrainerError(
            f"cannot load the NATS TLS files (NATS_TLS_CA/CERT/KEY): {exc}", code="nats_tls"
        ) from exc
    return context


async def connect(
    url: str, settings: Settings | None = None, *, name: str = "swift-trainer"
) -> Client:
    """Connect with reconnects forever: a restarted server must not take processes down.

    ``url`` may list several servers, comma-separated (the nodes of a cluster); the client
    also learns the other nodes from the one it reaches, and moves to a live one when its
    node dies.
    """
    servers = [part.strip() for part in url.split(",") if part.strip()]
    options: dict[str, Any] = {
        "servers": servers,
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 5,
    }
    if settings is not None:
        if settings.nats_user:
            options["user"] = settings.nats_user
            options["password"] = settings.nats_password or ""
        if settings.nats_token:
            options["token"] = settings.nats_token
        if settings.nats_creds:
            options["user_credentials"] = settings.nats_creds
        tls = tls_context(settings)
        if tls is not None:
            options["tls"] = tls

    async def on_error(exc: Exception) -> None:
        _log.warning("nats connection error: %s", exc)

    client: list[Client] = []

    async def on_disconnect() -> None:
        if client and (client[0].is_closed or client[0].is_draining):
            return  # our own shutdown, not an outage
        _log.warning("nats disconnected; reconnecting")

    async def on_reconnect() -> None:
        _log.info("nats reconnected")

    nc = await nats.connect(
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        **options,
    )
    client.append(nc)
    return nc


def events_stream_config(replicas: int = 1) -> StreamConfig:
    """Every stored event; kept forever (the SQL store is the truth, this is the feed)."""
    return StreamConfig(
        num_replicas=replicas,
        name=subjects.EVENTS_STREAM,
        description="Stored job events, published by the outbox relay in global order",
        subjects=[subjects.EVENTS_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=2 * DAY,
        discard=DiscardPolicy.OLD,
        allow_direct=True,
    )


#: Messages the LOGS stream keeps per job (per ``st.logs.<job_id>`` subject). At least as
#: many lines as the read model's per-job buffer (``Limits.log_lines``), so a replay refills
#: it, and at most 5,000 x 64 KiB per job, so one chatty job cannot push every other job's
#: lines out of the stream's shared ``max_bytes``.
LOG_MESSAGES_PER_JOB: Final = 5_000


def logs_stream_config(
    max_bytes: int = 2 * 1024**3,
    max_age_s: float = 14 * DAY,
    replicas: int = 1,
    per_job: int = LOG_MESSAGES_PER_JOB,
) -> StreamConfig:
    """Training output: bounded by size and age, since a chatty job must not fill the disk,
    and per job, since one job must not crowd out the others."""
    return StreamConfig(
        num_replicas=replicas,
        name=subjects.LOGS_STREAM,
        description="stdout/stderr lines of training and export processes",
        subjects=[subjects.LOGS_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_bytes=max_bytes,
        max_age=max_age_s,
        max_msgs_per_subject=per_job,
        max_msg_size=64 * 1024,
        discard=DiscardPolicy.OLD,
        duplicate_window=120.0,
        allow_direct=True,
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
        except BadRequestError:
            # Another process created it in the meantime; fall through to the update.
            _log.debug("stream %s created concurrently", config.name)
        else:
            return
    await js.update_stream(config)


async def ensure_bucket(
    js: JetStreamContext, bucket: str, ttl_s: float, history: int = 1, replicas: int = 1
) -> None:
    """Create the bucket unless it exists; an existing bucket's own settings win.

    Processes started together race to create it: a create refused because another
    process just made the bucket (with its own TTL) counts as done once the bucket is there.
    """
    try:
        await js.key_value(bucket)
    except (NotFoundError, BadRequestError):
        config = KeyValueConfig(
            bucket=bucket, ttl=ttl_s, history=history, storage=StorageType.FILE, replicas=replicas
        )
        try:
            await js.create_key_value(config)
        except BadRequestError:
            await js.key_value(bucket)  # made concurrently: fine; still missing: raise
            _log.debug("bucket %s created concurrently", bucket)


#: What a JetStream call answers while a cluster elects leaders or a node restarts.
TRANSIENT_JETSTREAM_ERRORS: Final = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
    ServerError,
)


async def retry_transient(
    call: Callable[[], Awaitable[T]], what: str, *, patience_s: float = 120.0
) -> T:
    """``call()`` again, backing off, while JetStream answers as it does during a leader
    election (a cluster node just died), up to ``patience_s``: a process starting then must
    wait, not exit, or a passing fault becomes a dead component."""
    delay = 0.2
    deadline = asyncio.get_running_loop().time() + patience_s
    while True:
        try:
            return await call()
        except TRANSIENT_JETSTREAM_ERRORS as exc:
            if asyncio.get_running_loop().time() + delay > deadline:
                raise
            _log.warning("%s: JetStream not ready (%r); again in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def provision(
    js: JetStreamContext,
    *,
    runner_lease_s: float = 15.0,
    scheduler_lease_s: float = 5.0,
    replicas: int = 1,
    patience_s: float = 120.0,
) -> None:
    """Create or update the EVENTS and LOGS streams and the lease buckets, each kept on
    ``replicas`` nodes (``NATS_STREAM_REPLICAS``; 3 on a 3-node cluster survives a node).

    A process that starts while its cluster elects a leader (a node just died) waits for
    it, up to ``patience_s``, instead of exiting: a restart must not turn a passing fault
    into a dead component.
    """
    await retry_transient(
        lambda: _provision_once(js, runner_lease_s, scheduler_lease_s, replicas),
        "provisioning",
        patience_s=patience_s,
    )


async def _provision_once(
    js: JetStreamContext, runner_lease_s: float, scheduler_lease_s: float, replicas: int
) -> None:
    await ensure_stream(js, events_stream_config(replicas))
    await ensure_stream(js, logs_stream_config(replicas=replicas))
    await ensure_bucket(js, subjects.RUNNERS_BUCKET, runner_lease_s, replicas=replicas)
    await ensure_bucket(js, subjects.SCHEDULER_LEASE_BUCKET, scheduler_lease_s, replicas=replicas)
    await ensure_file_bucket(js, replicas=replicas)


async def settle(reply: Awaitable[None], verb: str, msg: Msg) -> None:
    """Send an ack, nak or term; a failure is logged, not raised: the message is then
    redelivered after ``ack_wait`` and handled again (handling is idempotent)."""
    try:
        await reply
    except Exception as exc:
        _log.warning("cannot %s the message on %s: %s", verb, msg.subject, exc)
