"""Dataset uploads through ``/v1/files``: throughput and the API process's memory.

    uv run python tests/perf/bench_upload.py [--mib 200]

Starts ``swift-trainer up --simulate-gpus 1`` and streams a generated JSONL file of
``--mib`` MiB to ``POST /v1/files`` (multipart, chunked), while sampling the service
process's resident memory. Baseline, in the same run: the same bytes put straight into the
same JetStream object store with nats-py (no HTTP, no multipart parsing, no JSONL check).
Prints MiB/s of both, their ratio, and the service's peak RSS growth during the upload:
the upload is streamed (spooled to disk, checked line by line), so the growth should stay a
small fraction of the file size.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

from swift_trainer.bus.connection import connect
from swift_trainer.bus.embedded import free_port
from swift_trainer.bus.file_store import FileStore
from swift_trainer.core.dataset_files import FileRecord, new_file_id

LINE = (
    json.dumps(
        {
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Summarise the following text. " + "lorem ipsum " * 20},
                {"role": "assistant", "content": "A short summary. " * 10},
            ]
        }
    ).encode()
    + b"\n"
)
BOUNDARY = "benchboundary7d3f"


def body(total: int) -> Iterator[bytes]:
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    sent, chunk = 0, LINE * max(1, (256 * 1024) // len(LINE))
    while sent < total:
        yield chunk
        sent += len(chunk)
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def payload_size(total: int) -> int:
    chunk = len(LINE * max(1, (256 * 1024) // len(LINE)))
    return -(-total // chunk) * chunk


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.samples += 1
            time.sleep(0.02)


async def direct_put(nats_url: str, size: int) -> float:
    nc = await connect(nats_url, name="bench-upload")
    try:
        store = FileStore(nc.jetstream())
        data = b"".join(b for b in body(size))  # a baseline in memory is fine: it is the client
        record = FileRecord(
            id=new_file_id(),
            filename="direct.jsonl",
            purpose="fine-tune",
            bytes=len(data),
            created_at=int(time.time()),
            status="processed",
        )
        start = time.perf_counter()
        await store.put(record, io.BytesIO(data))
        return time.perf_counter() - start
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=200)
    args = parser.parse_args()
    size = args.mib * 1024 * 1024
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "REDIS", "EVENT"))}
        env.update(
            SWIFT_TRAINER_DATA_DIR=tmp,
            OUTPUT_ROOT=str(Path(tmp) / "out"),
            APP_HOST="127.0.0.1",
            APP_PORT=str(port),
            LOG_LEVEL="WARNING",
            FILES_MAX_BYTES=str(2 * size),
        )
        service = subprocess.Popen(
            [sys.executable, "-m", "swift_trainer.cli", "up", "--simulate-gpus", "1"], env=env
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(base + "/api/v1/training/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or service.poll() is not None:
                    raise SystemExit("the service did not start")
                time.sleep(0.2)
            sampler = RssSampler(service.pid)
            before = psutil.Process(service.pid).memory_info().rss
            sampler.start()
            start = time.perf_counter()
            response = httpx.post(
                base + "/v1/files",
                content=body(size),
                headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
                timeout=600,
            )
            http_s = time.perf_counter() - start
            sampler.stop.set()
            sampler.join()
            uploaded = response.json()
            assert uploaded.get("status") == "processed", uploaded
            assert uploaded["bytes"] == payload_size(size), uploaded
            nats_url = (Path(tmp) / "nats.url").read_text().strip()
            direct_s = asyncio.run(direct_put(nats_url, size))
        finally:
            service.send_signal(signal.SIGINT)
            service.wait(timeout=60)
    mib = payload_size(size) / 2**20
    growth = (sampler.peak - before) / 2**20
    print(f"file: {mib:.0f} MiB of JSONL ({len(LINE)} bytes a line)")
    print(f"POST /v1/files (multipart, checked, stored): {mib / http_s:7.1f} MiB/s")
    print(f"baseline: nats-py object-store put         : {mib / direct_s:7.1f} MiB/s")
    print(f"ratio (upload time / baseline time): {http_s / direct_s:.2f}")
    print(
        f"service RSS before {before / 2**20:.1f} MiB, peak during the upload "
        f"{sampler.peak / 2**20:.1f} MiB ({sampler.samples} samples): growth {growth:.1f} MiB "
        f"({100 * growth / mib:.1f}% of the file)"
    )


if __name__ == "__main__":
    main()
