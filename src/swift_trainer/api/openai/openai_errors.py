"""Errors under ``/v1`` in the OpenAI shape, so the official client raises its own classes.

``{"error": {"message", "type", "param", "code"}}``; the client picks its exception class
from the status (400 BadRequestError, 404 NotFoundError, 413, 422, ...) and retries 409, 429
and 5xx on its own. A refused state change is therefore a 400 (not the native API's 409)
and carries ``x-should-retry: false``: retrying cannot change the job's state. The rest of
the API keeps problem details.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap
from redis.exceptions import RedisError

from ...core.errors import SwiftTrainerError
from ..problems import RETRY_AFTER_S, ApiProblem, status_for_code
from .schemas import OpenAIError, OpenAIErrorBody

_log = logging.getLogger(__name__)

#: Domain and API codes -> HTTP status under /v1.
_STATUS: Final[Mapping[str, int]] = {
    "job_not_found": 404,
    "file_not_found": 404,
    "not_found": 404,
    "invalid_transition": 400,
    "no_checkpoint": 400,
    "checkpoint_missing": 400,
    "job_already_exists": 400,
    "invalid_spec": 400,
    "validation_error": 400,
    "malformed_json": 400,
    "bad_request": 400,
    "invalid_cursor": 400,
    "unsatisfiable": 400,
    "invalid_file": 400,
    "method_not_allowed": 405,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
}
_NO_RETRY: Final = frozenset({"invalid_transition", "no_checkpoint", "job_already_exists"})


class OpenAIProblem(Exception):
    """A refusal decided by the /v1 layer, with the parameter it is about."""

    def __init__(self, code: str, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def error_type(status: int) -> str:
    if status == 404:
        return "not_found_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def openai_error(
    status: int,
    code: str,
    message: str,
    *,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response[bytes]:
    all_headers = dict(headers or {})
    if code in _NO_RETRY or (400 <= status < 500 and status not in (409, 429)):
        all_headers["x-should-retry"] = "false"
    if status == 503:
        all_headers.setdefault("Retry-After", str(RETRY_AFTER_S))
    body = OpenAIError(
        error=OpenAIErrorBody(message=message, type=error_type(status), param=param, code=code)
    )
    return Response(
        content=msgspec.json.encode(body),
        status_code=status,
        media_type="application/json",
        headers=all_headers,
    )


def status_of(code: str) -> int:
    if code in _STATUS:
        return _STATUS[code]
    # Unavailable dependencies and the rest keep the native mapping (503 and 500).
    return status_for_code(code)


def _handle_openai(_: Request[Any, Any, Any], exc: OpenAIProblem) -> Response[bytes]:
    return openai_error(status_of(exc.code), exc.code, exc.message, param=exc.param)


def _handle_problem(_: Request[Any, Any, Any], exc: ApiProblem) -> Response[bytes]:
    status = _STATUS.get(exc.code, exc.status)
    param = None
    if exc.errors:
        param = exc.errors[0].key or None
    return openai_error(status, exc.code, exc.detail, param=param, headers=exc.headers)


def _handle_domain(request: Request[Any, Any, Any], exc: SwiftTrainerError) -> Response[bytes]:
    status = status_of(exc.code)
    if status >= 500:
        _log.warning("%s %s failed: %s", request.method, request.url.path, exc)
    return openai_error(status, exc.code, exc.message)


def _handle_validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    extra = exc.extra if isinstance(exc.extra, list) else []
    first = next((x for x in extra if isinstance(x, dict)), {})
    param = str(first.get("key") or "") or None
    message = str(first.get("message") or exc.detail)
    if param:
        message = f"{param}: {message}"
    return openai_error(400, "validation_error", message, param=param)


def _handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    if status >= 500:
        _log.error("%s %s failed: %r", request.method, request.url.path, exc)
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        status, "bad_request" if status < 500 else "internal_error"
    )
    headers = {k: str(v) for k, v in (exc.headers or {}).items()}
    return openai_error(status, code, str(exc.detail), headers=headers)


def _handle_redis(request: Request[Any, Any, Any], exc: RedisError) -> Response[bytes]:
    _log.warning("read model unavailable during %s %s: %r", request.method, request.url.path, exc)
    return openai_error(503, "read_model_unavailable", f"the read model did not answer: {exc}")


def _handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    _log.exception("unhandled error in %s %s", request.method, request.url.path)
    return openai_error(500, "internal_error", "an unexpected error occurred; it has been logged")


def openai_exception_handlers() -> ExceptionHandlersMap:
    return {
        OpenAIProblem: _handle_openai,
        ApiProblem: _handle_problem,
        SwiftTrainerError: _handle_domain,
        ValidationException: _handle_validation,
        HTTPException: _handle_http,
        RedisError: _handle_redis,
        Exception: _handle_unexpected,
    }
