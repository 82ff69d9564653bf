"""Uploaded datasets in a JetStream object store: one bucket, every host reads it.

Content is chunked by the object store (it also computes the SHA-256 digest runners cache
by); the file's record (``FileRecord``: name, purpose, status, owner) rides in the object's
description, so content and record are written in one meta message and cannot disagree.
Reads and writes go through files on disk, in chunks: a dataset is never held whole in
memory here.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Final, cast

import msgspec
from nats.js import JetStreamContext
from nats.js.api import ObjectInfo, ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.errors import ObjectNotFoundError as NatsObjectNotFound
from nats.js.object_store import ObjectStore

from ..core.dataset_files import FileRecord, JsonlCheck, new_file_id
from ..core.errors import SwiftTrainerError

_log = logging.getLogger(__name__)

#: The object-store bucket holding uploaded files (stream ``OBJ_FILES``).
FILES_BUCKET: Final = "FILES"

_record_decoder: Final = msgspec.json.Decoder(FileRecord)


class FileNotFound(SwiftTrainerError):
    code = "file_not_found"


async def ensure_file_bucket(js: JetStreamContext, *, replicas: int = 1) -> ObjectStore:
    """Bind the files bucket, creating it on first use (idempotent, like ``provision``)."""
    try:
        return await js.object_store(FILES_BUCKET)
    except (NotFoundError, BadRequestError):
        config = ObjectStoreConfig(
            bucket=FILES_BUCKET,
            description="uploaded datasets (/v1/files)",
            storage=StorageType.FILE,
            replicas=replicas,
        )
        return await js.create_object_store(FILES_BUCKET, config=config)


def record_of(info: ObjectInfo) -> FileRecord | None:
    """The record stored with an object, with the store's digest; None for a foreign one."""
    if info.deleted or not info.description:
        return None
    try:
        record = _record_decoder.decode(info.description)
    except (msgspec.DecodeError, msgspec.ValidationError):
        _log.warning("object %s in %s has no file record; ignored", info.name, FILES_BUCKET)
        return None
    return msgspec.structs.replace(record, digest=info.digest or None)


class FileStore:
    """Put, read, list and delete uploaded files by id."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._bucket: ObjectStore | None = None

    async def bucket(self) -> ObjectStore:
        if self._bucket is None:
            self._bucket = await ensure_file_bucket(self.js)
        return self._bucket

    async def put(self, record: FileRecord, content: BinaryIO) -> FileRecord:
        """Store ``content`` (read in chunks) under ``record.id``; returns it with its digest."""
        bucket = await self.bucket()
        meta = ObjectMeta(name=record.id, description=msgspec.json.encode(record).decode())
        info = await bucket.put(record.id, cast(io.BufferedIOBase, content), meta=meta)
        return msgspec.structs.replace(record, digest=info.digest or None)

    async def get(self, file_id: str) -> FileRecord:
        bucket = await self.bucket()
        try:
            info = await bucket.get_info(file_id)
        except (NatsObjectNotFound, NotFoundError):
            raise FileNotFound(f"no file {file_id!r}") from None
        record = record_of(info)
        if record is None:
            raise FileNotFound(f"no file {file_id!r}")
        return record

    async def list(self) -> list[FileRecord]:
        """Every file, oldest first (by ``created_at``, then id)."""
        bucket = await self.bucket()
        try:
            infos = await bucket.list(ignore_deletes=True)
        except NotFoundError:
            return []
        records = [r for info in infos if (r := record_of(info)) is not None]
        return sorted(records, key=lambda r: (r.created_at, r.id))

    async def delete(self, file_id: str) -> None:
        await self.get(file_id)
        bucket = await self.bucket()
        with contextlib.suppress(NatsObjectNotFound, NotFoundError):
            await bucket.delete(file_id)

    async def set_owner(self, file_id: str, owner: str) -> FileRecord:
        """Give a file to ``owner``: the record in the object's description is rewritten."""
        record = msgspec.structs.replace(await self.get(file_id), owner=owner)
        stored = msgspec.structs.replace(record, digest=None)
        meta = ObjectMeta(name=file_id, description=msgspec.json.encode(stored).decode())
        bucket = await self.bucket()
        await bucket.update_meta(file_id, meta)
        return record

    async def download(self, file_id: str, target: Path) -> FileRecord:
        """Write the content to ``target`` atomically (a temp file renamed into place).

        The object store checks the SHA-256 digest while reading, so a half-written or
        corrupted copy never lands at ``target``.
        """
        record = await self.get(file_id)
        bucket = await self.bucket()
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{file_id}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as sink:
                await bucket.get(file_id, writeinto=sink)
            os.replace(tmp_name, target)
        except (NatsObjectNotFound, NotFoundError):
            raise FileNotFound(f"no file {file_id!r}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
        return record


def _check_file(path: Path) -> tuple[int, JsonlCheck]:
    check = JsonlCheck()
    size = 0
    with path.open("rb") as source:
        while chunk := source.read(256 * 1024):
            size += len(chunk)
            check.feed(chunk)
    check.finish()
    return size, check


async def upload_path(
    store: FileStore, path: Path, *, purpose: str = "fine-tune", owner: str = "local"
) -> FileRecord:
    """Check a local JSONL file line by line and store it, as ``POST /v1/files`` does.

    For ``swift-trainer upload`` on a machine that reaches NATS: read twice in chunks (the
    check, then the object store), never whole in memory.
    """
    size, check = await asyncio.to_thread(_check_file, path)
    problem = check.problem
    record = FileRecord(
        id=new_file_id(),
        filename=path.name,
        purpose=purpose,
        bytes=size,
        created_at=int(time.time()),
        status="error" if problem else "processed",
        status_details=problem,
        records=check.records,
        preference_records=check.preference_records,
        owner=owner,
    )
    source = await asyncio.to_thread(path.open, "rb")
    with source:
        return await store.put(record, source)
