"""Job dependencies (``after``): when a waiting job may queue, and when it never will.

Pure rules, used by the releaser (a projection that sends the commands) and by the API's
checks at submission. A job's outcome is how it last ended: ``succeeded``, ``failed``,
``cancelled`` or ``deleted``; a job that is still on its way has none. A failed job that
is started again loses its outcome until it ends once more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Final, Literal

import msgspec

from .spec import Dependency

Outcome = Literal["succeeded", "failed", "cancelled", "deleted"]

#: The outcomes that fulfil each condition.
HOLDS: Final[Mapping[str, frozenset[str]]] = {
    "succeeded": frozenset({"succeeded"}),
    "failed": frozenset({"failed"}),
    "ended": frozenset({"succeeded", "failed", "cancelled", "deleted"}),
}

_VERB: Final[Mapping[str, str]] = {"succeeded": "succeed", "failed": "fail", "ended": "end"}


class Waiting(msgspec.Struct, frozen=True):
    """Some conditions still wait; ``pending`` names them."""

    pending: tuple[Dependency, ...]


class Met(msgspec.Struct, frozen=True):
    """Every condition holds: the job may queue."""


class Broken(msgspec.Struct, frozen=True):
    """A condition can no longer hold: the job is cancelled with ``reason``."""

    reason: str


Verdict = Waiting | Met | Broken


def verdict(after: Iterable[Dependency], outcomes: Mapping[str, Outcome]) -> Verdict:
    """What the conditions say, given the outcome of each job that has ended."""
    pending: list[Dependency] = []
    for condition in after:
        outcome = outcomes.get(condition.job)
        if outcome is None:
            pending.append(condition)
        elif outcome not in HOLDS[condition.on]:
            wanted = _VERB[condition.on]
            return Broken(
                reason=f"job {condition.job} {outcome}; this job waited for it to {wanted}"
            )
    return Waiting(pending=tuple(pending)) if pending else Met()


def find_cycle(
    job_id: str, after: Iterable[str], depends_on: Callable[[str], Iterable[str]]
) -> tuple[str, ...] | None:
    """A path of dependencies that leads from ``job_id`` back to itself, or None.

    ``depends_on(x)`` names the jobs job ``x`` waits for (none for an unknown job). The
    search visits each job once, so a long chain costs one lookup per job.
    """
    stack: list[tuple[str, tuple[str, ...]]] = [(x, (job_id, x)) for x in after]
    seen: set[str] = set()
    while stack:
        current, path = stack.pop()
        if current == job_id:
            return path
        if current in seen:
            continue
        seen.add(current)
        stack.extend((nxt, (*path, nxt)) for nxt in depends_on(current))
    return None
