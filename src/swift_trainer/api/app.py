"""Wiring the Litestar app: one plugin adds the routes, errors, docs and dependencies.

Routes live under ``{api_prefix}/training``; the interactive docs are at ``/docs`` and the
OpenAPI document at ``/schema/openapi.json``, outside the prefix.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Final

import psutil
from litestar import Litestar, Router
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Tag
from litestar.plugins import InitPlugin

from .asyncapi_endpoint import asyncapi_json
from .auth.guard import AuthGuard, check_every_route_guarded
from .auth.rate_limit import WriteRateLimit
from .dashboard import dashboard_handlers
from .deps import ApiDeps
from .docs import docs_routes, offline_swagger
from .http_tracing import HttpTracing
from .jobs.controllers import JobsController
from .jobs.reads import JobReadsController
from .metrics import HttpMetrics, MetricsEndpoint
from .openai import openai_router
from .problems import MAX_BODY_BYTES, exception_handlers
from .queue.controllers import QueueController
from .runners.controllers import RunnersController
from .sweeps.controllers import SweepsController
from .system.controllers import SystemController
from .usage import UsageController
from .webhooks import WebhooksController


def _api_version() -> str:
    try:
        return version("swift-trainer")
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        return "0.0.0"


API_VERSION: Final = _api_version()


_DESCRIPTION: Final = """\
Runs ms-swift fine-tuning jobs on your own GPU hosts. Writes are recorded as events and
acted on asynchronously; reads come from projections of those events, so a job you just
created may take a moment to appear in reads.

**Job statuses**: `held` (created with `auto_start: false`), `waiting` (for the jobs named
in `after`), `queued`, `scheduled` (GPUs chosen, the runner is starting it), `running`,
`stopping`, `succeeded`, `failed`, `stopped`, `paused` (resumable), `timed_out` (reached
its `max_runtime`; resumable), `cancelled` (final).

**Errors** are RFC 9457 problem details (`application/problem+json`) with a stable `code`.
Validation failures are 422, malformed JSON 400, state conflicts 409, an unavailable
dependency 503 with `Retry-After`.

**Idempotency**: send `Idempotency-Key` on a write; a retry with the same key gets the
first request's outcome and acts only once.
"""


class SwiftTrainerApi(InitPlugin):
    """Adds the API to an app config; ``create_app`` is the usual way in."""

    def __init__(self, deps: ApiDeps, *, api_prefix: str = "/api/v1") -> None:
        self.deps = deps
        self.api_prefix = "/" + api_prefix.strip("/") if api_prefix.strip("/") else ""
        self.guard = AuthGuard(
            deps.access,
            f"{self.api_prefix}/training",
            deps.read_model,
            WriteRateLimit(deps.write_rate, deps.write_burst),
        )

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        deps = self.deps
        training = Router(
            path=f"{self.api_prefix}/training",
            route_handlers=[
                JobsController,
                JobReadsController,
                QueueController,
                SystemController,
                UsageController,
                SweepsController,
                RunnersController,
                WebhooksController,
            ],
            # On the router: Litestar ignores a limit set on the app config by a plugin.
            request_max_body_size=MAX_BODY_BYTES,
        )
        openai = openai_router(max_body_bytes=MAX_BODY_BYTES)
        app_config.route_handlers.extend(
            [training, openai, *docs_routes(), MetricsEndpoint, asyncapi_json]
        )
        # Outermost first: the span covers the metered time.
        app_config.middleware.extend([HttpTracing, HttpMetrics])
        # The web dashboard at / (it calls the API above; see api/dashboard).
        app_config.route_handlers.extend(
            dashboard_handlers(f"{self.api_prefix}/training", API_VERSION)
        )
        # Every route passes the key check first (api/auth; open routes in its policy), as
        # the before-request hook: a Litestar guard would copy the route handler per request.
        app_config.before_request = self.guard.before_request
        app_config.dependencies["deps"] = Provide(lambda: deps, sync_to_thread=False)
        app_config.exception_handlers = {**app_config.exception_handlers, **exception_handlers()}
        app_config.openapi_config = OpenAPIConfig(
            title="Swift Trainer API",
            version=API_VERSION,
            description=_DESCRIPTION,
            path="/schema",
            render_plugins=[offline_swagger(path="/swagger")],
            tags=[
                Tag(name="jobs", description="Training jobs: create, control, follow."),
                Tag(name="queue", description="The GPU queue and its processor."),
                Tag(name="system", description="GPUs, system status and health."),
                Tag(name="openai", description="OpenAI-compatible files and fine-tuning."),
                Tag(name="usage", description="GPU-hours per owner, label or day."),
                Tag(name="webhooks", description="Signed deliveries of your jobs' events."),
            ],
            use_handler_docstrings=False,
        )
        app_config.on_startup.append(_prime_cpu_counter)
        return app_config


def _prime_cpu_counter() -> None:
    # psutil's first non-blocking reading is always 0.0: take it now, not in a request.
    psutil.cpu_percent(interval=None)


def create_app(deps: ApiDeps, *, api_prefix: str = "/api/v1", debug: bool = False) -> Litestar:
    api = SwiftTrainerApi(deps, api_prefix=api_prefix)
    app = Litestar(
        plugins=[api],
        debug=debug,
        # The process configures logging (text or JSON lines with trace ids); Litestar's
        # default config would replace the root logger's handlers with its own format.
        logging_config=None,
    )
    check_every_route_guarded(app, api.guard)
    return app
