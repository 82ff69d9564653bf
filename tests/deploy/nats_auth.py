"""A nats-server started with the repository's auth config (deploy/nats/auth.conf), as
compose.yaml runs it: the passwords are compose's defaults, read from compose.yaml."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from swift_trainer.bus.embedded import free_port, nats_server_binary

from .compose_file import DEPLOY, service

USERS = ("handler", "scheduler", "runner", "api", "operator")


def compose_passwords() -> dict[str, str]:
    """``NATS_<USER>_PASSWORD`` as compose.yaml gives them to the nats service."""
    from .compose_file import interpolate

    raw = service("nats")["environment"]
    return {key: interpolate(str(value)) for key, value in raw.items()}


@contextlib.contextmanager
def nats_with_shipped_auth(folder: Path) -> Iterator[str]:
    """Start nats-server (JetStream in ``folder``) with auth.conf; yield its URL."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEPLOY / "nats" / "auth.conf", folder / "auth.conf")
    port = free_port()
    (folder / "server.conf").write_text(
        f"port: {port}\nhttp_port: -1\n"
        f"jetstream {{ store_dir: {folder / 'js'} }}\ninclude ./auth.conf\n"
    )
    server = subprocess.Popen(
        [nats_server_binary(), "-c", str(folder / "server.conf")],
        env={**os.environ, **compose_passwords()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert server.stderr is not None
    try:
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert server.poll() is None, server.stderr.read().decode()
            assert time.monotonic() < deadline, "nats-server did not listen"
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        server.stderr.close()
