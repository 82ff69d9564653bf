"""Leadership among schedulers: one key in a NATS KV bucket whose messages expire.

The bucket's TTL (``max_age``, set when it is provisioned) is the lease: the holder
rewrites the key every ``ttl / 3`` with a compare-and-set on the revision it last wrote,
and a holder that dies stops rewriting it, so the server drops the key one TTL after the
last renewal. Standbys try ``create`` (which succeeds only while the key is absent, or
deleted) every ``ttl / 5``, so one takes over at most about ``1.2 * ttl`` after the
leader's last renewal.

A holder counts itself leader only while its last successful write is younger than the
TTL (less a margin), measured on its own monotonic clock from *before* the write was sent:
the server cannot have expired the key earlier, so two instances never both believe they
lead at once unless a clock runs at a very different rate. A renewal that fails for any
reason ends leadership at once; the ledger of GPU claims (``core.gpu_ledger``) is what keeps
a deposed leader's commands still in flight from doing harm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

_log = logging.getLogger(__name__)

LEADER_KEY = "leader"
#: Fraction of the TTL a holder does not count on, for the time a write takes to land.
SAFETY_MARGIN = 0.1


class LeaseValue(msgspec.Struct, frozen=True):
    holder: str
    renewed_at: datetime


class LeaderLease:
    """Acquires and keeps the ``leader`` key for ``holder_id``; ``run`` loops forever.

    ``on_change(True)`` is called on gaining leadership and ``on_change(False)`` on losing
    it (failed renewal, expiry on this side, or ``release``).
    """

    def __init__(
        self,
        kv: KeyValue,
        holder_id: str,
        *,
        ttl_s: float,
        key: str = LEADER_KEY,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kv = kv
        self.holder_id = holder_id
        self.ttl_s = ttl_s
        self.key = key
        self.on_change = on_change
        self.clock = clock
        #: The holder as last seen (ourselves while leading); None when nobody holds it.
        self.leader_id: str | None = None
        self._revision: int | None = None
        self._valid_until = 0.0

    @property
    def is_leader(self) -> bool:
        return self._revision is not None and self.clock() < self._valid_until

    def _value(self) -> bytes:
        return msgspec.json.encode(LeaseValue(self.holder_id, datetime.now(UTC)))

    async def run(self) -> None:
        while True:
            if self._revision is not None and not self.is_leader:
                self._lose("the lease ran out before it could be renewed")
            if self._revision is None:
                await self.try_acquire()
                if self._revision is None:
                    await asyncio.sleep(self.ttl_s / 5)
                    continue
            await asyncio.sleep(self.ttl_s / 3)
            await self.renew()

    async def try_acquire(self) -> bool:
        started = self.clock()
        try:
            revision = await self.kv.create(self.key, self._value())
        except KeyWrongLastSequenceError:
            await self.read_holder()
            return False
        except Exception as exc:  # NATS down or slow: try again on the next round
            _log.debug("cannot try for the scheduler lease: %r", exc)
            return False
        self._revision = revision
        self._valid_until = started + self.ttl_s * (1 - SAFETY_MARGIN)
        self.leader_id = self.holder_id
        _log.info("scheduler %s is the leader now", self.holder_id)
        if self.on_change is not None:
            self.on_change(True)
        return True

    async def renew(self) -> bool:
        if self._revision is None:
            return False
        started = self.clock()
        try:
            revision = await self.kv.update(self.key, self._value(), last=self._revision)
        except Exception as exc:
            self._lose(f"renewing the lease failed ({exc!r})")
            return False
        self._revision = revision
        self._valid_until = started + self.ttl_s * (1 - SAFETY_MARGIN)
        return True

    async def read_holder(self) -> str | None:
        """Who holds the lease now, per the bucket (None when nobody or unreadable)."""
        try:
            entry = await self.kv.get(self.key)
            holder = msgspec.json.decode(entry.value or b"", type=LeaseValue).holder
        except KeyNotFoundError:
            holder = None
        except Exception as exc:
            _log.debug("cannot read the scheduler lease: %r", exc)
            return self.leader_id
        self.leader_id = holder
        return holder

    async def release(self) -> None:
        """Give the lease up now, so that a standby need not wait for it to expire."""
        revision = self._revision
        if revision is None:
            return
        self._lose("released", level=logging.INFO)
        with contextlib.suppress(Exception):
            await self.kv.delete(self.key, last=revision)

    def _lose(self, why: str, *, level: int = logging.WARNING) -> None:
        if self._revision is None:
            return
        self._revision = None
        self._valid_until = 0.0
        self.leader_id = None
        _log.log(level, "scheduler %s is no longer the leader: %s", self.holder_id, why)
        if self.on_change is not None:
            self.on_change(False)
