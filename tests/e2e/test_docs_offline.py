"""``/docs`` renders in a real browser with no internet: Swagger UI comes from the service.

A GPU cluster is often offline; the page used to load Swagger UI from a CDN and stayed
blank there. A control page that still loads from the CDN proves the cut-off is real.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from .chromium import dump_dom_offline, listed_operations
from .live_service import start_service, stop_service


def test_docs_lists_every_operation_with_the_network_cut_off(tmp_path: Path) -> None:
    process, base = start_service(tmp_path / "data")
    try:
        schema = httpx.get(f"{base}/schema/openapi.json", timeout=10).json()
        documented = {
            (method.upper(), path)
            for path, item in schema["paths"].items()
            for method in item
            if method in {"get", "post", "put", "patch", "delete"}
        }
        page = httpx.get(f"{base}/docs", timeout=10).text
        assert "cdn.jsdelivr.net" not in page
        assert "https://" not in page.split("<body>")[0], "the page head loads nothing remote"

        dom = dump_dom_offline(f"{base}/docs", tmp_path / "profile")
        shown = listed_operations(dom)
        assert ("POST", "/api/v1/training/jobs") in shown
        assert shown == documented, sorted(documented ^ shown)

        # The control: the same spec with Swagger UI from the CDN renders no operation here.
        control = tmp_path / "cdn.html"
        cdn = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5.18.2"
        control.write_text(
            f'<html><head><link href="{cdn}/swagger-ui.css" rel="stylesheet">'
            f'<script src="{cdn}/swagger-ui-bundle.js"></script></head><body>'
            f"<div id='c'></div><script>SwaggerUIBundle({{spec: {json.dumps(schema)}, "
            "dom_id: '#c'})</script></body></html>",
            encoding="utf-8",
        )
        blank = dump_dom_offline(control.as_uri(), tmp_path / "profile")
        assert listed_operations(blank) == set()
    finally:
        stop_service(process)
