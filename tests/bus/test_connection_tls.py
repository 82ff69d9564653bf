"""TLS to NATS (``NATS_TLS_CA``/``NATS_TLS_CERT``/``NATS_TLS_KEY``) against a real
nats-server that requires TLS, with a throwaway CA made by openssl."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import missing

from swift_trainer.bus.connection import connect, tls_context
from swift_trainer.bus.embedded import free_port, nats_server_binary
from swift_trainer.core.errors import SwiftTrainerError
from swift_trainer.core.settings import load_settings


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    if shutil.which("openssl") is None:
        missing("openssl is not installed (.ci/run installs it)")
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        cwd=tmp_path,
    )
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=tmp_path,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            cwd=tmp_path,
        )
    return tmp_path


@pytest.fixture
def tls_server(certificates: Path) -> Iterator[str]:
    port = free_port()
    config = certificates / "server.conf"
    config.write_text(
        f"port: {port}\nhttp_port: -1\n"
        f"tls {{ cert_file: {certificates / 'server.pem'}, key_file: {certificates / 'server.key'},"
        f" ca_file: {certificates / 'ca.pem'}, verify: true }}\n"
    )
    server = subprocess.Popen(
        [nats_server_binary(), "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        yield f"tls://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


async def test_mutual_tls_to_nats(tls_server: str, certificates: Path) -> None:
    settings = load_settings(
        {
            "NATS_TLS_CA": str(certificates / "ca.pem"),
            "NATS_TLS_CERT": str(certificates / "client.pem"),
            "NATS_TLS_KEY": str(certificates / "client.key"),
        }
    )
    nc = await connect(tls_server, settings, name="tls-test")
    try:
        await nc.flush(timeout=5)
        assert nc.is_connected
    finally:
        await nc.close()


def test_unreadable_tls_files_are_a_clear_error(tmp_path: Path) -> None:
    settings = load_settings({"NATS_TLS_CA": str(tmp_path / "missing.pem")})
    with pytest.raises(SwiftTrainerError, match="NATS_TLS"):
        tls_context(settings)
    assert tls_context(load_settings({})) is None
