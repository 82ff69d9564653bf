"""The OpenAI-compatible API under ``/v1``: files and fine-tuning jobs for the official client."""

from __future__ import annotations

from litestar import Router

from .files import FilesController
from .fine_tuning import FineTuningJobsController
from .openai_errors import openai_exception_handlers


def openai_router(*, max_body_bytes: int) -> Router:
    """``/v1`` with its own error shape; JSON bodies share the native API's size limit
    (uploads set their own, ``FILES_MAX_BYTES``, enforced while streaming)."""
    return Router(
        path="/v1",
        route_handlers=[FilesController, FineTuningJobsController],
        exception_handlers=openai_exception_handlers(),
        request_max_body_size=max_body_bytes,
    )
