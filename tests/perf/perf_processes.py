"""Processes a benchmark starts: each ``swift-trainer`` component, timed and measured."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx

from swift_trainer.bus.embedded import EmbeddedNatsServer


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Component:
    """One ``swift-trainer`` process, its output in a file (a full pipe would stall it)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        logs: Path,
        *,
        program: list[str] | None = None,
    ) -> None:
        """``program`` replaces ``swift-trainer`` (``args`` then follow it)."""
        self.name = name
        self.log_path = logs / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [*(program or [sys.executable, "-m", "swift_trainer.cli"]), *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def check(self) -> None:
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise SystemExit(f"{self.name} exited with {self.process.returncode}:\n{tail}")

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> float:
        """Seconds from the process start until ``ready()``; polls every 50 ms."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            self.check()
            if ready():
                return time.perf_counter() - self.started
            time.sleep(0.05)
        raise SystemExit(f"{self.name} not ready within {timeout:.0f} s; see {self.log_path}")

    @property
    def rss(self) -> float:
        return rss_mib(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def http_ready(client: httpx.Client) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return client.get("/health/ready").status_code == 200
        except httpx.HTTPError:
            return False

    return ready


class UnsyncedNatsServer(EmbeddedNatsServer):
    """JetStream with NATS's own default flush interval (``sync_interval: 2m``).

    The embedded server flushes every second. ``bench_scale`` and ``bench_logs --unsynced``
    use this one to take the disk out of their figures altogether."""

    def _config(self) -> str:
        config = super()._config()
        if "sync_interval: 1s" not in config:  # the figures would be labelled wrongly
            raise RuntimeError("the embedded server's flush interval changed; update this")
        return config.replace("sync_interval: 1s", "sync_interval: 2m")
