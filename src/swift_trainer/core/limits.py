"""Size limits that several layers must agree on (a runner truncates what the domain would
otherwise refuse), kept in one place."""

from __future__ import annotations

from typing import Final

#: Longest reason a command or event carries (stop, failure, rejection, loss).
MAX_REASON_CHARS: Final = 4096
