"""The simulator's multi-node rendezvous: torchrun's agents meeting over TCP, in miniature.

Standard library only (the simulator runs it as part of a script). Node 0's agent listens
on ``MASTER_PORT``; every other node's agent connects to ``MASTER_ADDR:MASTER_PORT``, as
torchrun's c10d store does, and fails like torchrun when it cannot. The link then carries
one word: node 0 says ``done`` when its workers finished well. A link that closes without
it means rank 0 is gone, and the other nodes end their workers with an error, as NCCL
would. Each node also records the rendezvous environment it saw in the output folder
(``rendezvous-node-<NODE_RANK>.json``), so tests can check what every rank was given.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

RENDEZVOUS_KEYS: Final = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NPROC_PER_NODE")
_DONE: Final = b"done\n"


def record_env(output_dir: Path, env: Mapping[str, str]) -> Path:
    """Write what this node was given to join the others."""
    output_dir.mkdir(parents=True, exist_ok=True)
    seen = {key: env.get(key) for key in RENDEZVOUS_KEYS}
    path = output_dir / f"rendezvous-node-{env.get('NODE_RANK', '0')}.json"
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps({**seen, "pid": os.getpid(), "at": time.time()}))
    partial.replace(path)
    return path


class MasterLink:
    """Node 0's side: accept the other nodes and tell them when training ended well."""

    def __init__(self, port: int) -> None:
        self._server = socket.create_server(("", port), reuse_port=False)
        self._peers: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="rendezvous").start()

    def _accept(self) -> None:
        while True:
            try:
                peer, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self._peers.append(peer)

    def finish(self) -> None:
        with self._lock:
            for peer in self._peers:
                with contextlib.suppress(OSError):
                    peer.sendall(_DONE)
                peer.close()
        self._server.close()


class WorkerLink:
    """Another node's side: join node 0, then notice when it goes away."""

    def __init__(self, address: str, port: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._sock = socket.create_connection((address, port), timeout=2.0)
                break
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise ConnectionError(
                        f"torch.distributed.DistNetworkError: failed to connect to "
                        f"{address}:{port} within {timeout_s:g}s: {exc}"
                    ) from exc
                time.sleep(0.2)
        self._sock.setblocking(False)
        self._buffer = b""
        self.done = False

    def master_gone(self) -> bool:
        """Whether node 0 closed the link without saying it finished well."""
        if self.done:
            return False
        readable, _, _ = select.select([self._sock], [], [], 0)
        if not readable:
            return False
        try:
            data = self._sock.recv(64)
        except BlockingIOError:
            return False
        except OSError:
            return True
        self._buffer += data
        if _DONE in self._buffer:
            self.done = True
            return False
        return not data
