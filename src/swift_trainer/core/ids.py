"""Identifiers: job ids users can read, and time-ordered ids for events and commands."""

from __future__ import annotations

import random
import re
import time
from typing import Final

#: A client-chosen job id: letters, digits, ``_`` and ``-``, at most 64 characters.
#: ``(?!\n)``: Python's ``$`` also matches before a trailing newline and msgspec *searches*
#: with the pattern, so ``"a\n"`` passed; in JSON Schema's ECMA dialect it is a no-op.
JOB_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$(?!\n)"
_JOB_ID_RE: Final = re.compile(JOB_ID_PATTERN)


def is_valid_job_id(job_id: str) -> bool:
    return bool(_JOB_ID_RE.fullmatch(job_id))


def new_id() -> str:
    """A 32-hex-digit id whose first 12 digits are the millisecond clock (UUIDv7 layout).

    Time order makes ids sort like the log and keeps B-tree inserts local; the random tail
    keeps them unique across processes without coordination. None is a secret, so the tail
    comes from ``random`` (seeded from the OS, and again in every forked child) rather than
    a system call per id.
    """
    millis = time.time_ns() // 1_000_000
    rand = random.getrandbits(76)
    value = (millis & ((1 << 48) - 1)) << 80 | (0x7 << 76) | (rand & ((1 << 76) - 1))
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return f"{value:032x}"


def new_job_id() -> str:
    """A job id for clients that did not name their job: ``job-`` and 12 hex digits."""
    return "job-" + new_id()[-12:]


def job_stream(job_id: str) -> str:
    """The event-store stream that holds one job's history."""
    return f"job-{job_id}"


#: The stream of the queue processor's own state (paused or running).
QUEUE_PROCESSOR_STREAM: Final = "queue-processor"

#: The stream of runner drains and GPU health (see ``fleet``).
FLEET_STREAM: Final = "fleet"

#: The stream of the GPU ledger: which job attempt holds which GPUs (see ``gpu_ledger``).
GPU_LEDGER_STREAM: Final = "gpu-ledger"
