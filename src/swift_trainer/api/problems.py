"""Every failure as RFC 9457 problem details, with the domain's error code kept verbatim.

Clients branch on ``code`` (stable, the same string the NATS reply carries) rather than on
the HTTP status, which groups several codes. Status choices, in one place so they stay
consistent:

- 400 ``malformed_json``: the body is not JSON at all (or an unreadable request).
- 404 ``job_not_found`` / ``not_found``.
- 409 ``job_already_exists``, ``invalid_transition``, ``no_checkpoint``, ``stale_assignment``,
  ``concurrency_conflict``: the request is well formed but the job's state refuses it.
- 413 ``payload_too_large``.
- 422 ``validation_error`` (wrong types, unknown fields, out-of-range values, bad query
  parameters), ``invalid_spec`` (the domain refused the job spec), ``invalid_cursor``,
  ``unsatisfiable`` (no known host could ever run the job).
- 503 ``command_unavailable``, ``store_error``, ``read_model_unavailable``, ``not_ready``:
  a dependency is down; ``Retry-After`` says when to try again.
- 500 ``internal_error``: a bug; logged with its traceback, never caused by client input.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Final

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ExceptionHandlersMap
from redis.exceptions import RedisError

from ..core.commands import NAME_PATTERN
from ..core.errors import SwiftTrainerError
from ..core.ids import JOB_ID_PATTERN
from ..core.spec import TrainArgs

_log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
PROBLEM_TYPE_PREFIX: Final = "urn:swift-trainer:problem:"
#: Seconds a client should wait before retrying after a 503.
RETRY_AFTER_S: Final = 2
#: Bodies larger than this are refused with 413 (a job spec is a few KiB).
MAX_BODY_BYTES: Final = 1024 * 1024

#: What a value matching each pattern may hold, in words (a regex is no answer for a person).
_PATTERN_WORDS: Final[Mapping[str, str]] = {
    JOB_ID_PATTERN: "a job id is 1 to 64 letters, digits, '_' or '-', starting with a "
    "letter or digit",
    NAME_PATTERN: "a name is 1 to 64 letters, digits, '_', '.', '@' or '-', starting with a "
    "letter or digit",
}
_REGEX_TEXT = re.compile(r"Expected `str` matching regex (?P<pattern>.*)$")

CODE_STATUS: Final[Mapping[str, int]] = {
    "malformed_json": 400,
    "bad_request": 400,
    "not_found": 404,
    "job_not_found": 404,
    "method_not_allowed": 405,
    "job_already_exists": 409,
    "sweep_not_found": 404,
    "sweep_already_exists": 409,
    "sweep_full": 409,
    "invalid_transition": 409,
    "no_checkpoint": 409,
    "checkpoint_missing": 409,
    "stale_assignment": 409,
    "gpu_taken": 409,
    "concurrency_conflict": 409,
    "domain_error": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "validation_error": 422,
    "invalid_spec": 422,
    "invalid_cursor": 422,
    "unsatisfiable": 422,
    "command_unavailable": 503,
    "store_error": 503,
    "integrity_error": 503,
    "read_model_error": 503,
    "read_model_conflict": 503,
    "read_model_unavailable": 503,
    "not_ready": 503,
}

_TITLES: Final[Mapping[str, str]] = {
    "malformed_json": "Request body is not valid JSON",
    "job_not_found": "Job not found",
    "job_already_exists": "Job already exists",
    "invalid_transition": "Not allowed in the job's current status",
    "no_checkpoint": "No checkpoint to export",
    "checkpoint_missing": "The checkpoint is no longer on disk",
    "stale_assignment": "Stale assignment",
    "concurrency_conflict": "The job changed concurrently",
    "validation_error": "Request failed validation",
    "invalid_spec": "Invalid job spec",
    "invalid_cursor": "Invalid cursor",
    "unsatisfiable": "No known host can run this job",
    "command_unavailable": "Command handler unavailable",
    "store_error": "Event store unavailable",
    "read_model_unavailable": "Read model unavailable",
    "not_ready": "Service not ready",
}


class FieldProblem(msgspec.Struct, frozen=True):
    """One field's problem in a ``validation_error`` (or the limit a quota refusal hit)."""

    message: str
    #: The field's path in the body, query or header (``""`` for the body as a whole).
    key: str = ""
    #: ``body``, ``query``, ``header``, ``path``, ``quota``...
    source: str = "body"

    def describe(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class ProblemDetails(msgspec.Struct, frozen=True, omit_defaults=True):
    """RFC 9457 problem details; ``code`` and ``errors`` are extension members."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    #: Field-level problems of a ``validation_error``.
    errors: list[FieldProblem] | None = None
    #: Per-dependency results of a failed readiness check.
    checks: dict[str, bool | str] | None = None


class ApiProblem(Exception):
    """A refusal decided in the API layer itself (not by the domain or the framework)."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        errors: list[FieldProblem] | None = None,
        checks: dict[str, bool | str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status or CODE_STATUS.get(code, 500)
        self.headers = dict(headers or {})
        self.errors = errors
        self.checks = checks


def status_for_code(code: str) -> int:
    return CODE_STATUS.get(code, 500)


def _title(code: str, status: int) -> str:
    if code in _TITLES:
        return _TITLES[code]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_response(
    request: Request[Any, Any, Any] | None,
    *,
    code: str,
    detail: str,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    errors: list[FieldProblem] | None = None,
    checks: dict[str, bool | str] | None = None,
) -> Response[bytes]:
    status = status or status_for_code(code)
    all_headers = dict(headers or {})
    if status == 503:
        all_headers.setdefault("Retry-After", str(RETRY_AFTER_S))
    problem = ProblemDetails(
        type=PROBLEM_TYPE_PREFIX + code,
        title=_title(code, status),
        status=status,
        detail=detail,
        code=code,
        instance=request.url.path if request is not None else None,
        errors=errors,
        checks=checks,
    )
    return Response(
        content=msgspec.json.encode(problem),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=all_headers,
    )


# --- exception handlers -------------------------------------------------------------------

_MSGSPEC_PATH = re.compile(r" - at `\$(?:\.data)?\.?(?P<path>[^`]*)`$")


def readable_message(key: str, message: str) -> str:
    """A validator's message in words a person can act on.

    A pattern is described instead of shown, and an unknown ``train_args`` key comes with
    the list of known ones.
    """
    regex = _REGEX_TEXT.search(message)
    if regex is not None:
        shown = regex.group("pattern")
        for pattern, words in _PATTERN_WORDS.items():
            if pattern.split("$", 1)[0] in shown:
                return words
        return "holds characters or a length this field does not accept"
    if key.split(".", 1)[0] == "train_args" and "unknown field" in message:
        known = ", ".join(sorted(TrainArgs.__struct_fields__))
        return f"{message}; known keys: {known}"
    return message


def validation_errors_from_msgspec(exc: msgspec.ValidationError) -> list[FieldProblem]:
    """msgspec says ``Expected `int`, got `str` - at `$.priority```; split it for clients."""
    text = str(exc)
    match = _MSGSPEC_PATH.search(text)
    if match is None:
        return [FieldProblem(message=readable_message("", text))]
    key = match.group("path")
    return [FieldProblem(message=readable_message(key, text[: match.start()]), key=key)]


def _handle_problem(request: Request[Any, Any, Any], exc: ApiProblem) -> Response[bytes]:
    return problem_response(
        request,
        code=exc.code,
        detail=exc.detail,
        status=exc.status,
        headers=exc.headers,
        errors=exc.errors,
        checks=exc.checks,
    )


def _handle_domain(request: Request[Any, Any, Any], exc: SwiftTrainerError) -> Response[bytes]:
    status = status_for_code(exc.code)
    if status >= 500:
        _log.warning("%s %s failed: %s", request.method, request.url.path, exc)
    return problem_response(request, code=exc.code, detail=exc.message, status=status)


def _readable_errors(extra: Any) -> list[FieldProblem]:
    errors: list[FieldProblem] = []
    if isinstance(extra, list):
        for item in extra:
            if not isinstance(item, dict):
                continue
            raw_source = item.get("source") or "body"
            # Litestar gives a parameter's source as its ParamType enum: keep the plain word.
            source = str(getattr(raw_source, "value", raw_source))
            key = str(item.get("key") or "")
            message = readable_message(key, str(item.get("message", "")))
            if key == "data" and source == "body":
                key = ""  # Litestar names the body itself "data"
            # A missing required body arrives as KeyError('data') text: say it plainly.
            if key == "" and message == "'data'":
                message = "a JSON request body is required"
            errors.append(FieldProblem(message=message, key=key, source=source))
    return errors


def _handle_validation(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[bytes]:
    errors = _readable_errors(exc.extra)
    summary = "; ".join(e.describe() for e in errors)
    return problem_response(
        request,
        code="validation_error",
        detail=summary or str(exc.detail),
        errors=errors or None,
    )


_HTTP_CODES: Final[Mapping[int, str]] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    if status >= 500:
        _log.error("%s %s failed: %r", request.method, request.url.path, exc)
    code = _HTTP_CODES.get(status, "internal_error" if status >= 500 else f"http_{status}")
    detail = str(exc.detail)
    if status == 400 and isinstance(exc.__cause__, SerializationException):
        code, detail = "malformed_json", f"the request body is not valid JSON: {exc.detail}"
    elif status == 413:
        detail = (
            f"the request body is larger than the {MAX_BODY_BYTES // (1024 * 1024)} MiB "
            "this API accepts"
        )
    headers = {k: str(v) for k, v in (exc.headers or {}).items()}
    return problem_response(request, code=code, detail=detail, status=status, headers=headers)


def _handle_redis(request: Request[Any, Any, Any], exc: RedisError) -> Response[bytes]:
    _log.warning("read model unavailable during %s %s: %r", request.method, request.url.path, exc)
    return problem_response(
        request,
        code="read_model_unavailable",
        detail=f"the read model (Redis) did not answer: {exc}",
    )


def _handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    _log.exception("unhandled error in %s %s", request.method, request.url.path)
    return problem_response(
        request,
        code="internal_error",
        detail="an unexpected error occurred; it has been logged",
        status=500,
    )


def exception_handlers() -> ExceptionHandlersMap:
    """Class-keyed only: Litestar picks the most specific class along the MRO."""
    return {
        ApiProblem: _handle_problem,
        SwiftTrainerError: _handle_domain,
        ValidationException: _handle_validation,
        HTTPException: _handle_http,
        RedisError: _handle_redis,
        Exception: _handle_unexpected,
    }


_DESCRIPTIONS: Final[Mapping[int, str]] = {
    400: "The body is not JSON (`malformed_json`).",
    404: "No such job (`job_not_found`).",
    409: "The job's current status refuses this (`invalid_transition`, "
    "`job_already_exists`, `no_checkpoint`).",
    413: "The body is too large (`payload_too_large`).",
    422: "The request failed validation (`validation_error`, `invalid_spec`, "
    "`invalid_cursor`, `unsatisfiable`).",
    503: "A dependency is down (`command_unavailable`, `read_model_unavailable`); see Retry-After.",
}


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the problem responses a handler can give."""
    return {
        status: ResponseSpec(
            data_container=ProblemDetails,
            description=_DESCRIPTIONS.get(status, HTTPStatus(status).phrase),
            media_type=PROBLEM_MEDIA_TYPE,
            generate_examples=False,
        )
        for status in statuses
    }
