"""Strict request bodies: ``"5"`` is not a priority, ``1`` is not ``true``.

Litestar converts bodies in msgspec's lax mode, which turns numeric strings into numbers.
Handlers still declare their body type (that is what the OpenAPI schema is built from), and
then decode the raw bytes again strictly here, so a wrong type is a 422, not a guess.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from litestar import Request

from .problems import ApiProblem, validation_errors_from_msgspec

T = TypeVar("T")


async def strict_body(request: Request[Any, Any, Any], body_type: type[T]) -> T:
    return decode_strict(await request.body(), body_type)


async def optional_strict_body(request: Request[Any, Any, Any], body_type: type[T]) -> T | None:
    raw = await request.body()
    if not raw.strip() or raw.strip() == b"null":
        return None
    return decode_strict(raw, body_type)


def decode_strict(raw: bytes, body_type: type[T]) -> T:
    try:
        decoded: T = msgspec.json.decode(raw, type=body_type)
        return decoded
    except msgspec.ValidationError as exc:
        errors = validation_errors_from_msgspec(exc)
        raise ApiProblem(
            "validation_error",
            "; ".join(e.describe() for e in errors),
            errors=errors,
        ) from exc
    except msgspec.DecodeError as exc:
        raise ApiProblem(
            "malformed_json", f"the request body is not valid JSON: {exc}", status=400
        ) from exc
