"""A runner's copy of uploaded datasets: fetched once, keyed by id and digest, never trusted
when it does not match."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from nats.aio.client import Client

from swift_trainer.bus.connection import provision
from swift_trainer.bus.file_store import FileStore
from swift_trainer.core.dataset_files import FileRecord, new_file_id
from swift_trainer.core.spec import JobSpec
from swift_trainer.runner.dataset_cache import DatasetCache, DatasetUnavailable, digest_key

CONTENT = b'{"query": "q", "response": "r"}\n' * 100


async def put(nc: Client, content: bytes = CONTENT, **fields: object) -> FileRecord:
    base: dict[str, object] = {
        "id": new_file_id(),
        "filename": "d.jsonl",
        "purpose": "fine-tune",
        "bytes": len(content),
        "created_at": 1,
        "status": "processed",
    }
    return await FileStore(nc.jetstream()).put(
        FileRecord(**{**base, **fields}),  # type: ignore[arg-type]
        io.BytesIO(content),
    )


async def test_a_dataset_is_fetched_once_and_a_damaged_copy_again(
    nc: Client, tmp_path: Path
) -> None:
    await provision(nc.jetstream())
    stored = await put(nc)
    cache = DatasetCache(nc.jetstream(), tmp_path / "datasets")
    spec = JobSpec(model_path="m", output_dir="o", training_file=stored.id)

    paths = await cache.resolve(spec)
    local = Path(paths[stored.id])
    assert local == tmp_path / "datasets" / stored.id / f"{digest_key(stored.digest)}.jsonl"
    assert local.read_bytes() == CONTENT  # noqa: ASYNC240 - a test reading its own file
    assert len(local.stem) == 64
    await cache.resolve(spec)
    assert cache.fetches == 1, "a cached copy is reused"

    local.write_bytes(CONTENT[:10])  # a truncated copy (disk full during an old fetch)  # noqa: ASYNC240
    assert (await cache.local_path(stored.id)).read_bytes() == CONTENT
    assert cache.fetches == 2


async def test_missing_or_unusable_files_are_refused_with_a_reason(
    nc: Client, tmp_path: Path
) -> None:
    await provision(nc.jetstream())
    cache = DatasetCache(nc.jetstream(), tmp_path / "datasets")
    with pytest.raises(DatasetUnavailable, match="file-nothere"):
        await cache.local_path("file-nothere")
    bad = await put(nc, b"{oops\n", status="error", status_details="line 1: not valid JSON")
    with pytest.raises(DatasetUnavailable, match="line 1: not valid JSON"):
        await cache.local_path(bad.id)


def test_digest_keys_are_hex_and_safe_in_file_names() -> None:
    assert digest_key(None) == "nodigest"
    key = digest_key("SHA-256=" + "A" * 43 + "=")
    assert len(key) == 64 and all(c in "0123456789abcdef" for c in key)


async def test_a_job_trains_only_on_its_owners_files(nc: Client, tmp_path: Path) -> None:
    await provision(nc.jetstream())
    alices = await put(nc, owner="alice")
    cache = DatasetCache(nc.jetstream(), tmp_path / "datasets")
    for owner in ("bob", "local"):
        spec = JobSpec(model_path="m", output_dir="o", training_file=alices.id, owner=owner)
        with pytest.raises(DatasetUnavailable, match="no such file"):
            await cache.resolve(spec)
    assert cache.fetches == 0, "nothing of alice's reached the host"
    mine = JobSpec(model_path="m", output_dir="o", training_file=alices.id, owner="alice")
    assert list(await cache.resolve(mine)) == [alices.id]
    keyless = JobSpec(model_path="m", output_dir="o", training_file=alices.id)
    assert list(await cache.resolve(keyless)) == [alices.id], "the operator's job may"
