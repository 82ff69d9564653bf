"""Following a run's stdout/stderr files line by line, a bounded chunk at a time.

Output goes to files, not pipes: a pipe would tie the trainer's life to the runner's (after
a runner restart the next ``print`` would hit a closed pipe and kill a healthy job). Reads
are bounded (``MAX_READ_BYTES``) so a burst of output never stalls the event loop that also
serves HTTP in ``up``: a caller polls again while ``at_end`` is false.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

MAX_LINE: Final = 8192
#: The most one ``poll`` reads; a backlog is read over several polls.
MAX_READ_BYTES: Final = 1024 * 1024
_TAIL_SEED_BYTES: Final = 64 * 1024
_SPLIT: Final = re.compile(rb"\r\n|\r|\n")


class LineTail:
    """Complete lines appended to a file since the last call; ``\\r`` ends a line too,
    because tqdm redraws its bar with carriage returns and never writes a newline."""

    def __init__(
        self, path: str | Path, offset: int = 0, *, max_read: int = MAX_READ_BYTES
    ) -> None:
        self.path = Path(path)
        self.offset = offset
        self.max_read = max_read
        #: False while the last read stopped at ``max_read`` with more to come.
        self.at_end = True
        self._partial = b""

    def poll(self) -> list[str]:
        """The lines completed by the next chunk (at most ``max_read`` bytes) of the file."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read(self.max_read)
        except FileNotFoundError:
            data = b""
        self.at_end = len(data) < self.max_read
        if not data:
            return []
        self.offset += len(data)
        parts = _SPLIT.split(self._partial + data)
        self._partial = parts.pop()
        if len(self._partial) > MAX_LINE:  # a line that never ends is cut, not hoarded
            parts.append(self._partial)
            self._partial = b""
        return [decode_line(p) for p in parts if p.strip()]

    def finish(self) -> list[str]:
        """After the writer has exited: everything left, the unterminated last line included."""
        lines = self.poll()
        while not self.at_end:
            lines += self.poll()
        if self._partial.strip():
            lines.append(decode_line(self._partial))
        self._partial = b""
        return lines


def decode_line(raw: bytes) -> str:
    return raw[:MAX_LINE].decode("utf-8", "replace").rstrip()


def seed_tail(path: str, offset: int, lines: int) -> list[str]:
    """The last lines before ``offset``, to rebuild the stderr tail after a restart."""
    try:
        with open(path, "rb") as handle:
            start = max(offset - _TAIL_SEED_BYTES, 0)
            handle.seek(start)
            data = handle.read(offset - start)
    except FileNotFoundError:
        return []
    text = [decode_line(p) for p in _SPLIT.split(data) if p.strip()]
    return text[-lines:]
