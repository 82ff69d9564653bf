"""What a host has: CPUs, memory and the disk that holds job output. Read by runners for
their heartbeats and by the API for its own host; blocking (psutil reads /proc and statfs),
so callers on an event loop run it in a worker thread."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psutil

from .inventory import HostInfo


def existing_parent(path: Path) -> Path:
    """The output root may not exist before the first job; its disk is its nearest parent's."""
    current = path.absolute()
    while not current.exists() and current.parent != current:
        current = current.parent
    return current


def host_info(output_root: str | Path) -> HostInfo:
    memory = psutil.virtual_memory()
    disk_path = existing_parent(Path(output_root))
    disk = psutil.disk_usage(str(disk_path))
    try:
        load: tuple[float, float, float] | None = os.getloadavg()
    except OSError:
        load = None
    return HostInfo(
        hostname=socket.gethostname(),
        cpu_count=os.cpu_count() or 1,
        memory_total_bytes=memory.total,
        memory_available_bytes=memory.available,
        disk_path=str(disk_path),
        disk_total_bytes=disk.total,
        disk_free_bytes=disk.free,
        cpu_percent=psutil.cpu_percent(interval=None),
        load_average=load,
    )
