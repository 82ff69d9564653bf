"""The guard on every route: authenticate the Bearer key, then apply the route table.

It runs as the app's ``before_request`` hook, not as a Litestar guard: Litestar hands each
guard a copy of the route handler, made on every request (profiled: the copy cost more
than the check). The hook runs at the same point, before the handler's parameters are
parsed, and its refusals go through the same exception handlers. A hook set on a router,
controller or handler would replace it there, so ``create_app`` refuses to build an app
where any route resolves another (``check_every_route_guarded``).

Answers, before any handler runs: 401 without a valid key (with ``WWW-Authenticate:
Bearer``), 403 for a viewer's write or a non-admin's admin action, 404 for another
owner's job (so its existence does not leak), 429 with ``Retry-After`` past the write
rate. Under ``/v1`` the same refusals come in the OpenAI error shape (the router's
exception handlers shape ``ApiProblem``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from litestar import Litestar
from litestar.connection import ASGIConnection, Request

from ...core.access import ROLES
from ...core.commands import Role
from ...projections.access_view import AccessView
from ...projections.read_models.interface import ReadModel
from ..problems import ApiProblem
from .policy import route_need
from .principal import OPERATOR, Principal, current_principal
from .rate_limit import WriteRateLimit, retry_after_header

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="swift-trainer"'}


def _unauthorized(detail: str) -> ApiProblem:
    return ApiProblem("unauthorized", detail, status=401, headers=_CHALLENGE)


def bearer_secret(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


@dataclass
class AuthGuard:
    """``access`` None: authentication is off (every caller is the operator)."""

    access: AccessView | None
    training_prefix: str
    read_model: ReadModel
    rate_limit: WriteRateLimit = field(default_factory=WriteRateLimit)

    async def before_request(self, request: Request[Any, Any, Any]) -> None:
        """As the app's ``before_request`` hook (how the app runs it): None lets the
        handler answer."""
        await self.check(request)

    async def check(self, connection: ASGIConnection[Any, Any, Any, Any]) -> None:
        """Raise the refusal (401, 403, 404, 429) when the caller may not go on."""
        method = str(connection.scope.get("method", "GET"))
        need = route_need(method, connection.url.path, self.training_prefix)
        caller = self.authenticate(connection) if need.need != "open" else None
        if caller is None:
            current_principal.set(OPERATOR)
            return
        current_principal.set(caller)
        connection.scope.setdefault("state", {})["principal"] = caller
        if need.need == "admin" and caller.role != "admin":
            raise ApiProblem("forbidden", "this action needs an admin key", status=403)
        if need.need == "fleet" and caller.role == "user":
            raise ApiProblem(
                "forbidden",
                "these figures cover every owner: they need an admin or viewer key",
                status=403,
            )
        if need.need in ("write", "admin") and caller.role == "viewer":
            raise ApiProblem("forbidden", "a viewer key reads only", status=403)
        if need.job_id is not None and not caller.sees_everything():
            await self._check_owner(caller, need.job_id)
        if need.need in ("write", "admin") and caller.key_id is not None:
            wait = self.rate_limit.take(caller.key_id)
            if wait > 0:
                raise ApiProblem(
                    "rate_limited",
                    f"too many writes with this key; retry in {wait:.1f}s",
                    status=429,
                    headers={"Retry-After": retry_after_header(wait)},
                )

    def authenticate(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
        """The caller, or None for 'auth off'; raises 401 for a missing or unknown key."""
        if self.access is None:
            return None
        secret = bearer_secret(connection.headers.get("authorization"))
        if secret is None:
            raise _unauthorized("send an API key: Authorization: Bearer <secret>")
        key = self.access.authenticate(secret)
        if key is None:
            raise _unauthorized("the API key is unknown or revoked")
        role: Role = key.role if key.role in ROLES else "viewer"
        return Principal(role=role, key_id=key.key_id, owner=key.owner)

    async def _check_owner(self, caller: Principal, job_id: str) -> None:
        summary = await self.read_model.get_job(job_id)
        if summary is not None and not caller.may_see(summary.owner):
            raise ApiProblem("job_not_found", f"job {job_id!r} does not exist", status=404)


def check_every_route_guarded(app: Litestar, guard: AuthGuard) -> None:
    """Refuse an app where some HTTP route would answer without ``guard`` (another
    ``before_request`` hook set closer to the route replaces the app's)."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            hook = handler.resolve_before_request()
            if getattr(hook, "__self__", None) is not guard:
                raise RuntimeError(f"route {route.path} answers without the key check")
