"""Replace a file so that a crash leaves the old content or the new, never half of either.

The runner's durable state (run records, handled event ids, undelivered reports) is what a
restarted runner trusts, so a rename alone is not enough: without the fsyncs a power loss
can leave the new name pointing at an empty file (the data was never flushed) or the old
name back (the directory entry was never flushed).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def temp_path(path: Path) -> Path:
    """Where ``write_atomic`` stages ``path``: next to it (a rename never crosses a file
    system), ending in ``.tmp`` so a folder's leftovers can be swept with one glob."""
    return path.with_name(path.name + ".tmp")


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file, fsync it, rename it over ``path``, fsync the folder.

    Raises ``OSError`` as the underlying calls do; the temporary file is removed on failure.
    """
    target = Path(path)
    tmp = temp_path(target)
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_directory(target.parent)


def fsync_directory(folder: str | Path) -> None:
    """Flush a folder's entries (the rename) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the rename stands
        pass
    finally:
        os.close(fd)
