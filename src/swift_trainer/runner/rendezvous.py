"""Where the ranks of a multi-node job meet, and the proof that they share one output folder.

Rank 0's runner chooses a free port and its advertised address, writes them into a marker
in the job's output folder and reports them; the other ranks start only once the job's
events name the rendezvous, and each first reads the marker: a rank that cannot see it
runs on storage rank 0 does not share, and its checkpoints would be lost. Such a start is
refused with a message that says so.
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import msgspec

from ..core.gang import SHARED_OUTPUT_MARKER


class RendezvousMarker(msgspec.Struct, frozen=True):
    """What rank 0 writes in the job's output folder for one attempt."""

    job_id: str
    attempt: int
    master_addr: str
    master_port: int


def reaching_address(url: str | None) -> str:
    """This host's address on the route to ``url`` (the NATS server): the one other hosts
    of the cluster most likely reach it at. Loopback when nothing better is known."""
    parsed = urlparse(url or "")
    host = parsed.hostname
    if not host:
        return "127.0.0.1"
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, parsed.port or 4222))  # UDP: no packet is sent
        address: str = sock.getsockname()[0]
        if address and address != "0.0.0.0":  # noqa: S104 - compared, never bound
            return address
    return "127.0.0.1"


def free_port() -> int:
    """A TCP port free on every interface right now, for rank 0's process to listen on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        port: int = sock.getsockname()[1]
        return port


def write_marker(output_dir: str | Path, marker: RendezvousMarker) -> Path:
    """Write rank 0's marker (atomically: other hosts never read half of it)."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SHARED_OUTPUT_MARKER
    partial = folder / f"{SHARED_OUTPUT_MARKER}.{marker.attempt}.tmp"
    partial.write_bytes(msgspec.json.encode(marker))
    partial.replace(path)
    return path


def shared_output_problem(
    output_dir: str | Path, expected: RendezvousMarker, *, wait_s: float = 10.0
) -> str | None:
    """Why this rank does not share rank 0's output folder, or None when it does.

    Network file systems show a new file after a moment, so the marker is awaited for up
    to ``wait_s`` seconds before the start is refused.
    """
    path = Path(output_dir) / SHARED_OUTPUT_MARKER
    deadline = time.monotonic() + wait_s
    seen: RendezvousMarker | None = None
    while True:
        with contextlib.suppress(OSError, msgspec.DecodeError, msgspec.ValidationError):
            seen = msgspec.json.decode(path.read_bytes(), type=RendezvousMarker)
            if seen == expected:
                return None
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    found = "no marker" if seen is None else f"the marker of attempt {seen.attempt}"
    return (
        f"output_dir {output_dir} on this runner holds {found} from rank 0 of attempt "
        f"{expected.attempt}: OUTPUT_ROOT must be storage that every host of a multi-node "
        "job shares (the same NFS or Lustre path on each)"
    )
