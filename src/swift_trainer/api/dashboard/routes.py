"""The dashboard's two routes: the page shell at ``/`` and its assets under ``/dashboard``.

The shell is rendered once per app with the API's base path and version filled in, so the
scripts need no configuration of their own. Everything ships in the package: no CDN, no Node
step at install time. The vendored chart library is listed in ``assets/vendor/NOTICE``.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Final

from litestar import MediaType, Request, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.handlers import BaseRouteHandler
from litestar.static_files import create_static_files_router

ASSETS: Final = Path(__file__).parent / "assets"
#: Where the assets are served; the page shell links them from here.
ASSETS_PATH: Final = "/dashboard"

#: Only this origin's scripts, styles, images and connections; no framing. Inline styles
#: stay allowed because the chart library sizes its canvas through style attributes.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'; object-src 'none'"
)


def render_shell(api_base: str, version: str) -> bytes:
    """The page shell with the API base path and the asset version filled in."""
    template = (ASSETS / "index.html").read_text(encoding="utf-8")
    return (
        template.replace("{{API_BASE}}", html.escape(api_base, quote=True))
        .replace("{{VERSION}}", html.escape(version, quote=True))
        .replace("{{ASSETS}}", ASSETS_PATH)
        .encode()
    )


def dashboard_handlers(api_base: str, version: str) -> list[BaseRouteHandler | Any]:
    """The route handlers to add to the app: the shell at ``/`` and the asset router."""
    shell = render_shell(api_base, version)

    @get(
        "/",
        include_in_schema=False,
        media_type=MediaType.HTML,
        sync_to_thread=False,
        cache_control=CacheControlHeader(no_cache=True),
    )
    def dashboard(request: Request[Any, Any, Any]) -> Response[bytes]:
        # The same shell for every view: the views are chosen by the URL's fragment.
        return Response(
            shell,
            media_type=MediaType.HTML,
            headers={
                "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin",
            },
        )

    assets = create_static_files_router(
        path=ASSETS_PATH,
        directories=[ASSETS],
        name="dashboard-assets",
        # Revalidated on every load (ETag): a source checkout's version never changes.
        cache_control=CacheControlHeader(no_cache=True),
        include_in_schema=False,
    )
    return [dashboard, assets]
