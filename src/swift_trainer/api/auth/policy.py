"""What each route needs: the one table the guard enforces (and the tests walk).

Paths are matched after the API prefix is removed from native routes. ``open`` routes
answer without a key: liveness and readiness (orchestrators probe them), the dashboard's
page and assets (the page asks for a key), the API docs and contract (no data).
``/metrics`` is a ``fleet`` route: it names owners (GPU-seconds per owner), so under
required keys it needs an admin or viewer key (a scraper sends it as a bearer token).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

Need = Literal["open", "read", "write", "admin", "fleet"]

_READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})

#: Native routes (under ``{prefix}/training``) that only an admin may call.
_ADMIN: Final = re.compile(r"^/queue/(process|processor/(start|stop))/?$")
#: The runners and their drains: admins only, reads included.
_ADMIN_RUNNERS: Final = re.compile(r"^/runners(/.*)?$")
_NATIVE_JOB: Final = re.compile(r"^/(?:jobs|queue)/(?P<job_id>[^/]+)(?:/.*)?$")
_OPENAI_JOB: Final = re.compile(r"^/v1/fine_tuning/jobs/(?P<job_id>[^/]+)(?:/.*)?$")
_OPEN_NATIVE: Final = re.compile(r"^/health(/ready)?/?$")
_OPEN_TOP: Final = re.compile(r"^/($|health|docs|swagger|schema|dashboard|asyncapi\.json|favicon)")
#: Figures about every owner's work: admin and viewer keys only.
_FLEET_TOP: Final = re.compile(r"^/metrics/?$")
#: Segments after ``/queue/`` that are not job ids.
_QUEUE_WORDS: Final = frozenset({"process", "processor"})
#: The jobs list's change feed: about no one job (it filters by the caller itself).
_JOB_CHANGES: Final = re.compile(r"^/jobs/changes/stream/?$")


@dataclass(frozen=True)
class RouteNeed:
    need: Need
    #: The job the route is about, when it names one (ownership is checked on it).
    job_id: str | None = None
    openai: bool = False


def route_need(method: str, path: str, training_prefix: str) -> RouteNeed:
    """What a request needs; ``training_prefix`` is ``/api/v1/training`` by default."""
    openai = path == "/v1" or path.startswith("/v1/")
    if path.startswith(training_prefix + "/") or path == training_prefix:
        rest = path[len(training_prefix) :] or "/"
        if _OPEN_NATIVE.match(rest):
            return RouteNeed("open")
        if _ADMIN.match(rest) or _ADMIN_RUNNERS.match(rest):
            return RouteNeed("admin")
        job_id = None
        found = _NATIVE_JOB.match(rest)
        if found and found["job_id"] not in _QUEUE_WORDS and not _JOB_CHANGES.match(rest):
            job_id = found["job_id"]
        return RouteNeed("read" if method in _READ_METHODS else "write", job_id)
    if openai:
        found = _OPENAI_JOB.match(path)
        return RouteNeed(
            "read" if method in _READ_METHODS else "write",
            found["job_id"] if found else None,
            openai=True,
        )
    if _FLEET_TOP.match(path):
        return RouteNeed("fleet")
    if _OPEN_TOP.match(path):
        return RouteNeed("open")
    return RouteNeed("read" if method in _READ_METHODS else "write")
