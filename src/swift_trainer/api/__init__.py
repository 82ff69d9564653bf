"""The HTTP API: Litestar routes under ``{API_PREFIX}/training``, problem-details errors,
SSE streams and OpenAPI docs. ``create_app(ApiDeps(...))`` is the entry point."""

from .app import SwiftTrainerApi, create_app
from .deps import (
    ApiDeps,
    CommandSender,
    combine_checks,
    event_store_check,
    nats_check,
    nats_subscriber,
    read_model_check,
)

__all__ = [
    "ApiDeps",
    "CommandSender",
    "SwiftTrainerApi",
    "combine_checks",
    "create_app",
    "event_store_check",
    "nats_check",
    "nats_subscriber",
    "read_model_check",
]
