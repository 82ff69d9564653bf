"""The route table's edges that the role walk in ``test_auth.py`` cannot reach (streams)."""

from __future__ import annotations

import pytest

from swift_trainer.api.auth.policy import RouteNeed, route_need

T = "/api/v1/training"


@pytest.mark.parametrize(
    ("method", "path", "need"),
    [
        # The list's change feed is about no one job: the feed filters by the caller.
        ("GET", f"{T}/jobs/changes/stream", RouteNeed("read")),
        ("GET", f"{T}/jobs/changes/stream/", RouteNeed("read")),
        # A job that happens to be called "changes" is still checked as that job.
        ("GET", f"{T}/jobs/changes", RouteNeed("read", "changes")),
        ("GET", f"{T}/jobs/changes/logs/stream", RouteNeed("read", "changes")),
        ("POST", f"{T}/jobs/changes/stop", RouteNeed("write", "changes")),
        ("GET", f"{T}/jobs/j1/progress/stream", RouteNeed("read", "j1")),
    ],
)
def test_route_needs(method: str, path: str, need: RouteNeed) -> None:
    assert route_need(method, path, T) == need
