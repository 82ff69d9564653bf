"""The HTTP side of the terminal client: requests, problem details, server-sent events.

Every failure becomes a :class:`ClientError` with the exit code a script can branch on and
the message the server gave (RFC 9457 ``detail``), never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx
from httpx_sse import SSEError, aconnect_sse

from .profile import Connection

#: Exit codes: 0 success; 1 the server refused or the job failed; 2 usage; 3 unreachable.
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3


class ClientError(Exception):
    """What went wrong, as the user should read it, and the exit code that says so."""

    def __init__(
        self,
        message: str,
        *,
        exit_code: int = EXIT_REFUSED,
        status: int | None = None,
        code: str | None = None,
        problem: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.status = status
        self.code = code
        self.problem = problem

    def as_json(self) -> dict[str, Any]:
        if self.problem is not None:
            return self.problem
        return {"title": "client error", "detail": self.message, "code": self.code or "error"}


def _problem(response: httpx.Response) -> ClientError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        code = str(body.get("code") or "error")
        return ClientError(
            f"{body['detail']} ({code}, HTTP {response.status_code})",
            status=response.status_code,
            code=code,
            problem=body,
        )
    text = response.text.strip()[:200] or response.reason_phrase
    return ClientError(
        f"HTTP {response.status_code} from {response.request.url}: {text}",
        status=response.status_code,
        code="http_error",
    )


class ApiClient:
    """One server's training API; use as ``async with ApiClient(connection) as api``."""

    def __init__(self, connection: Connection, *, timeout_s: float = 30.0) -> None:
        self.connection = connection
        headers = {"Accept": "application/json", "User-Agent": "swift-trainer-cli"}
        if connection.api_key:
            headers["Authorization"] = f"Bearer {connection.api_key}"
        self._http = httpx.AsyncClient(
            base_url=connection.training_url, headers=headers, timeout=timeout_s
        )

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._http.aclose()

    def _unreachable(self, exc: httpx.HTTPError) -> ClientError:
        return ClientError(
            f"cannot reach {self.connection.url} (from {self.connection.source}): {exc}; "
            "set SWIFT_TRAINER_URL or --url",
            exit_code=EXIT_UNREACHABLE,
            code="unreachable",
        )

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """The decoded JSON answer (None for 204); a problem becomes a ClientError."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = await self._http.request(method, path, json=body, params=query)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise _problem(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ClientError(f"the server's answer is not JSON: {exc}") from exc

    async def follow(self, path: str, params: dict[str, Any] | None = None) -> AsyncIterator[Any]:
        """The data of each server-sent event until the server's ``end`` event."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            async with aconnect_sse(
                self._http, "GET", path, params=query, timeout=httpx.Timeout(30.0, read=None)
            ) as source:
                if source.response.status_code >= 400:
                    await source.response.aread()
                    raise _problem(source.response)
                async for event in source.aiter_sse():
                    if event.event == "end":
                        return
                    if event.event == "error":
                        raise ClientError(f"the stream failed: {event.data}")
                    if event.data:
                        yield json.loads(event.data)
        except (httpx.HTTPError, SSEError) as exc:
            raise self._unreachable(exc) from exc
