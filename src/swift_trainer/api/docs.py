"""Swagger UI at ``/docs`` that works without internet.

Litestar's render plugin loads Swagger UI from a public CDN by default, so on an offline GPU
cluster the page stays blank. The assets come instead from the ``swagger-ui-py`` wheel
(which ships Swagger UI's ``dist`` files) and are served by this app under ``/docs/assets``;
the page references nothing outside the service.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any, Final

from litestar import MediaType, Request, Router, get
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

#: Where the Swagger UI files are served (outside the API prefix, next to ``/docs``).
ASSETS_PATH: Final = "/docs/assets"

#: The files the page loads, checked when the app is built (a broken install fails loudly).
_ASSETS: Final = (
    "swagger-ui-bundle.js",
    "swagger-ui-standalone-preset.js",
    "swagger-ui.css",
    "favicon-32x32.png",
)


def swagger_assets_dir() -> Path:
    """The folder of Swagger UI's dist files inside the installed ``swagger_ui`` package."""
    folder = Path(str(files("swagger_ui") / "static"))
    missing = [name for name in _ASSETS if not (folder / name).is_file()]
    if missing:  # pragma: no cover - a broken install, not a runtime condition
        raise RuntimeError(f"swagger-ui-py is missing {missing} under {folder}")
    return folder


def offline_swagger(path: str = "/swagger") -> SwaggerRenderPlugin:
    """Litestar's Swagger page with every asset URL pointing at this service."""
    return SwaggerRenderPlugin(
        path=path,
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
    )


def docs_routes() -> list[Any]:
    """``/docs`` and the static assets it loads."""
    swagger = offline_swagger(path="/docs")

    @get("/docs", include_in_schema=False, media_type=MediaType.HTML, sync_to_thread=False)
    def docs(request: Request[Any, Any, Any]) -> bytes:
        # The same page the OpenAPI router serves at /schema/swagger, at /docs.
        schema = request.app.openapi_schema.to_schema()
        return swagger.render(request, schema)

    assets: Router = create_static_files_router(
        path=ASSETS_PATH,
        directories=[swagger_assets_dir()],
        include_in_schema=False,
        name="docs-assets",
    )
    return [docs, assets]
