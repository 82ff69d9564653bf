"""Uploaded datasets on a runner: fetched once from the object store, cached by id and digest.

Hosts share no filesystem, so a job that names ``training_file`` gets its dataset here,
right before swift starts, and ``swift --dataset`` gets the local path. The cache key holds
the content digest: a file id always names the same bytes, but a cache entry that does not
match the stored digest (a truncated copy, an old bucket) is fetched again rather than
trusted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Mapping
from pathlib import Path

from nats.js import JetStreamContext

from ..bus.file_store import FileStore
from ..core.errors import SwiftTrainerError
from ..core.spec import JobSpec

_log = logging.getLogger(__name__)


class DatasetUnavailable(SwiftTrainerError):
    """A job's uploaded dataset cannot be brought to this runner (deleted, unreadable)."""

    code = "dataset_unavailable"


def digest_key(digest: str | None) -> str:
    """``SHA-256=<urlsafe base64>`` as 64 hex digits (safe in a file name)."""
    if not digest:
        return "nodigest"
    encoded = digest.split("=", 1)[1] if "=" in digest[:8] else digest
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).hex()
    except (binascii.Error, ValueError):
        return "".join(ch for ch in encoded if ch.isalnum())[:64] or "nodigest"


class DatasetCache:
    """``local_path(file_id)``: the file on this host, fetched when not cached yet."""

    def __init__(self, js: JetStreamContext, cache_dir: str | Path) -> None:
        self.store = FileStore(js)
        self.cache_dir = Path(cache_dir)
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetches = 0

    def path_for(self, file_id: str, digest: str | None) -> Path:
        return self.cache_dir / file_id / f"{digest_key(digest)}.jsonl"

    async def local_path(self, file_id: str, owner: str | None = None) -> Path:
        """``owner``: the job's owner; a file of another owner is refused as unknown."""
        lock = self._locks.setdefault(file_id, asyncio.Lock())
        async with lock:  # two jobs on one file fetch it once
            try:
                record = await self.store.get(file_id)
            except SwiftTrainerError as exc:
                raise DatasetUnavailable(
                    f"dataset {file_id} cannot be fetched: {exc.message}"
                ) from exc
            if owner is not None and record.owner != owner:
                raise DatasetUnavailable(f"dataset {file_id} cannot be fetched: no such file")
            if record.status != "processed":
                raise DatasetUnavailable(
                    f"dataset {file_id} is {record.status}: {record.status_details or 'unusable'}"
                )
            target = self.path_for(file_id, record.digest)
            if target.is_file() and target.stat().st_size == record.bytes:
                return target
            try:
                await self.store.download(file_id, target)
            except Exception as exc:
                raise DatasetUnavailable(f"dataset {file_id} cannot be fetched: {exc}") from exc
            self.fetches += 1
            _log.info("fetched dataset %s (%d bytes) to %s", file_id, record.bytes, target)
            return target

    async def resolve(self, spec: JobSpec) -> Mapping[str, str]:
        """File id -> local path for every uploaded file ``spec`` names.

        A job with an owner trains only on that owner's files (the API checks it too; this
        holds for any command that reaches the bus). Jobs without an owner are the
        operator's and may name any file.
        """
        ids = [i for i in (spec.training_file, spec.validation_file) if i is not None]
        return {file_id: str(await self.local_path(file_id, spec.owner)) for file_id in ids}
