"""The ids of the events the agent has acted on, kept on disk across restarts."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from ..core.atomic_file import write_atomic

_log = logging.getLogger(__name__)


class HandledEvents:
    """Ids of the start and export events acted on, kept on disk across restarts.

    A start redelivered after the process it started has already ended (the ack was lost
    with a crash) must not train the attempt a second time. Bounded: the oldest ids go.
    """

    def __init__(self, path: str | Path, *, limit: int = 4096) -> None:
        self.path = Path(path)
        self.limit = limit
        self._ids: dict[str, None] = {}
        try:
            loaded = msgspec.json.decode(self.path.read_bytes(), type=list[str])
        except FileNotFoundError:
            loaded = []
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            _log.warning("ignoring unreadable %s: %s", self.path, exc)
            loaded = []
        self._ids = dict.fromkeys(loaded[-limit:])

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        while len(self._ids) > self.limit:
            self._ids.pop(next(iter(self._ids)))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_atomic(self.path, msgspec.json.encode(list(self._ids)))
        except OSError as exc:
            _log.error("cannot persist %s: %s", self.path, exc)
