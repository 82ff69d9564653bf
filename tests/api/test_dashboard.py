"""The dashboard's routes: the shell at ``/`` and its packaged assets.

The browser behaviour is tested in ``tests/e2e/test_dashboard.py``; these check what the
server sends, fast and without a browser.
"""

from __future__ import annotations

import re
from pathlib import Path

from swift_trainer.api.dashboard.routes import ASSETS, CONTENT_SECURITY_POLICY

from .conftest import Stack


async def test_the_shell_is_served_at_the_root_with_the_api_base(memory_stack: Stack) -> None:
    response = await memory_stack.client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["cache-control"] == "no-cache"
    html = response.text
    assert '<meta name="api-base" content="/api/v1/training">' in html
    assert "{{" not in html, "every placeholder is filled"
    assert "http://" not in html and "https://" not in html, "no CDN, nothing off-site"


async def test_every_asset_the_pages_name_is_served(memory_stack: Stack) -> None:
    html = (await memory_stack.client.get("/")).text
    linked = set(re.findall(r'(?:src|href)="(/dashboard/[^"?]+)', html))
    # The modules import each other by relative path: follow those too.
    for script in ASSETS.glob("*.js"):
        linked.update(
            f"/dashboard/{name}"
            for name in re.findall(r'from "\./([\w.]+)"', script.read_text(encoding="utf-8"))
        )
    assert {"/dashboard/app.js", "/dashboard/job.js", "/dashboard/charts.js"} <= linked
    for path in sorted(linked):
        response = await memory_stack.client.get(path)
        assert response.status_code == 200, path
        if path.endswith(".js"):
            # Module scripts load only with a JavaScript media type.
            assert response.headers["content-type"].startswith("text/javascript"), path
    missing = await memory_stack.client.get("/dashboard/nothing.js")
    assert missing.status_code == 404


def test_the_vendored_chart_library_carries_its_licence() -> None:
    vendor = Path(ASSETS, "vendor")
    assert "MIT" in (vendor / "uPlot.LICENSE").read_text(encoding="utf-8")
    assert "uPlot" in (vendor / "NOTICE").read_text(encoding="utf-8")
    assert (
        (vendor / "uPlot.iife.min.js")
        .read_text(encoding="utf-8")
        .startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
    )
