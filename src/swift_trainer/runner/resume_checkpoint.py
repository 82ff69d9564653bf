"""Which checkpoint an attempt resumes from on this host (a rotated one is replaced)."""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Final

_log = logging.getLogger(__name__)

_CHECKPOINT_DIR: Final = re.compile(r"checkpoint-(\d+)")


def resolve_resume(resume_from: str | None) -> tuple[str | None, str | None]:
    """The checkpoint to resume from here, or why there is none: ``(path, problem)``.

    A relative path is resolved inside the job's output folder by the command builder. An
    absolute one must be on this host. When it is gone but the folder holds newer complete
    checkpoints (an attempt marked lost trained on, and ``save_total_limit`` rotated the
    recorded one away), the newest is used: it holds at least as much progress. A
    checkpoint folder without its ``trainer_state.json`` is incomplete and never used.
    """
    if not resume_from or not Path(resume_from).is_absolute():
        return resume_from, None
    if (Path(resume_from) / "trainer_state.json").is_file():
        return resume_from, None  # complete: HF's Trainer writes this file last
    named = Path(resume_from)
    candidates = []
    with contextlib.suppress(OSError):
        for entry in named.parent.iterdir():
            match = _CHECKPOINT_DIR.fullmatch(entry.name)
            if match and (entry / "trainer_state.json").is_file():
                candidates.append((int(match.group(1)), entry))
    if candidates:
        newest = max(candidates)[1]
        _log.warning("checkpoint %s is gone or incomplete; resuming from %s", named, newest)
        return str(newest), None
    return None, f"checkpoint {resume_from} to resume from is not on this runner"
