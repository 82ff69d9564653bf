"""Uploaded files in the JetStream object store: records ride with content, digests are kept."""

from __future__ import annotations

import io
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from swift_trainer.bus.connection import provision
from swift_trainer.bus.file_store import FileNotFound, FileStore, upload_path
from swift_trainer.core.dataset_files import FileRecord, new_file_id


def record(size: int, **fields: object) -> FileRecord:
    base: dict[str, object] = {
        "id": new_file_id(),
        "filename": "d.jsonl",
        "purpose": "fine-tune",
        "bytes": size,
        "created_at": 1_700_000_000,
        "status": "processed",
    }
    return FileRecord(**{**base, **fields})  # type: ignore[arg-type]


async def test_put_get_list_download_delete(nc: Client, tmp_path: Path) -> None:
    await provision(nc.jetstream())
    store = FileStore(nc.jetstream())
    assert await store.list() == []
    content = b'{"query": "q", "response": "r"}\n' * 50_000  # several object-store chunks
    first = await store.put(record(len(content)), io.BytesIO(content))
    assert first.digest is not None and first.digest.startswith("SHA-256=")
    second = await store.put(
        record(3, status="error", status_details="line 1: x"), io.BytesIO(b"x\n\n")
    )
    assert await store.get(first.id) == first
    assert [r.id for r in await store.list()] == sorted([first.id, second.id])

    target = tmp_path / "copy" / "d.jsonl"
    await store.download(first.id, target)
    assert target.read_bytes() == content
    assert [p.name for p in target.parent.iterdir()] == ["d.jsonl"], "no temp file left"

    await store.delete(second.id)
    with pytest.raises(FileNotFound):
        await store.get(second.id)
    with pytest.raises(FileNotFound):
        await store.download(second.id, tmp_path / "gone.jsonl")
    assert not (tmp_path / "gone.jsonl").exists()
    assert [r.id for r in await store.list()] == [first.id]


async def test_a_local_file_is_checked_and_stored_like_an_upload(
    nc: Client, tmp_path: Path
) -> None:
    await provision(nc.jetstream())
    store = FileStore(nc.jetstream())
    good = tmp_path / "good.jsonl"
    good.write_bytes(b'{"query": "q", "response": "r", "rejected_response": "x"}\n' * 3)
    stored = await upload_path(store, good)
    assert (stored.status, stored.records, stored.preference_records) == ("processed", 3, 3)
    assert (stored.filename, stored.bytes) == ("good.jsonl", good.stat().st_size)
    assert await store.get(stored.id) == stored
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"query": "q", "response": "r"}\n[1]\n')
    refused = await upload_path(store, bad)
    assert (refused.status, refused.status_details) == (
        "error",
        "line 2: expected a JSON object, got list",
    )


async def test_set_owner_rewrites_the_record_and_keeps_content_and_digest(
    nc: Client, tmp_path: Path
) -> None:
    await provision(nc.jetstream())
    store = FileStore(nc.jetstream())
    content = b'{"query": "q", "response": "r"}\n' * 10
    stored = await store.put(record(len(content)), io.BytesIO(content))
    assert stored.owner == "local"
    moved = await store.set_owner(stored.id, "alice")
    assert moved == msgspec.structs.replace(stored, owner="alice")
    assert await store.get(stored.id) == moved
    await store.download(stored.id, tmp_path / "d.jsonl")
    assert (tmp_path / "d.jsonl").read_bytes() == content
    with pytest.raises(FileNotFound):
        await store.set_owner("file-000000000000000000000000", "alice")
