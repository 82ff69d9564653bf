"""``POST/GET/DELETE /webhooks``: signed deliveries of events, registered with an API key.

A ``user`` key's webhook receives only its own jobs' events; an admin's receives every
event its filter selects (as one registered with ``swift-trainer webhooks add``). A key
sees and removes only the webhooks of its owner (an admin: all); another owner's webhook
answers 404 like an unknown one. Registrations are events on the webhook's own stream, so
the API process needs the event store and the deployment's signing key.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec
from litestar import Controller, delete, get, post
from litestar.params import JSONBody, PathParameter

from ...core import webhook_events as w
from ...core.errors import SwiftTrainerError
from ...core.ids import new_id
from ...core.sqlaudit import streams_with_prefix
from ...projections.webhook_dispatcher import register_webhook, remove_webhook
from ..auth.principal import Principal, principal
from ..deps import Deps, WebhookAccess
from ..problems import ApiProblem, problems

WEBHOOK_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
WebhookIdPath = Annotated[str, PathParameter(pattern=WEBHOOK_ID_PATTERN, max_length=64)]


class CreateWebhook(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: Annotated[str, msgspec.Meta(max_length=2048)]
    #: Event types to deliver (``fnmatch`` patterns such as ``Job*``); empty: every one.
    event_types: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=128)]], msgspec.Meta(max_length=64)
    ] = []
    description: Annotated[str, msgspec.Meta(max_length=500)] = ""
    webhook_id: Annotated[str, msgspec.Meta(pattern=WEBHOOK_ID_PATTERN)] | None = None


class Webhook(msgspec.Struct, frozen=True, kw_only=True):
    webhook_id: str
    url: str
    event_types: list[str]
    #: Only this owner's jobs' events are delivered; null: every event (an admin's).
    owner: str | None
    description: str
    delivered: int
    abandoned: int
    #: Global position of the last event delivered or given up on.
    cursor: int


class CreatedWebhook(Webhook, frozen=True, kw_only=True):
    #: The HMAC secret that signs its deliveries (``X-Swift-Trainer-Signature``); shown once.
    secret: str


class WebhookList(msgspec.Struct, frozen=True):
    data: list[Webhook]


def _access(deps: Deps) -> WebhookAccess:
    if deps.webhooks is None:
        raise ApiProblem(
            "command_unavailable",
            "webhooks need the event store and the signing key: this API process has neither",
        )
    return deps.webhooks


def _view(state: w.WebhookState) -> Webhook:
    return Webhook(
        webhook_id=state.webhook_id,
        url=state.url or "",
        event_types=list(state.event_types),
        owner=state.owner,
        description=state.description,
        delivered=state.delivered,
        abandoned=state.abandoned,
        cursor=state.cursor,
    )


def _visible(caller: Principal, state: w.WebhookState) -> bool:
    return state.active and (caller.role == "admin" or state.owner == caller.owner)


async def _state(access: WebhookAccess, webhook_id: str) -> w.WebhookState:
    events = await access.store.read_stream(w.webhook_stream(webhook_id))
    decoded = [w.decode_webhook_event(e.type, e.payload) for e in events]
    return w.fold_webhook(webhook_id, decoded)


def _not_found(webhook_id: str) -> ApiProblem:
    return ApiProblem("webhook_not_found", f"no webhook {webhook_id!r}", status=404)


class WebhooksController(Controller):
    path = "/webhooks"
    tags = ("webhooks",)

    @post(
        "/",
        status_code=201,
        summary="Register a webhook",
        description=(
            "Events are POSTed to `url` as JSON, signed with the returned `secret`. A `user` "
            "key's webhook receives only its own jobs' events; an admin's receives every "
            "event its `event_types` select."
        ),
        responses=problems(403, 409, 422, 503),
    )
    async def create(self, deps: Deps, data: JSONBody[CreateWebhook]) -> CreatedWebhook:
        access = _access(deps)
        caller = principal()
        owner = None if caller.role == "admin" else caller.owner
        if caller.role != "admin" and owner is None:
            raise ApiProblem("forbidden", "this key has no owner to receive events for", status=403)
        webhook_id = data.webhook_id or "wh-" + new_id()[-12:]
        try:
            await register_webhook(
                access.store,
                webhook_id,
                data.url,
                tuple(data.event_types),
                actor=caller.actor or "api",
                description=data.description,
                owner=owner,
            )
        except w.WebhookError as exc:
            raise ApiProblem("validation_error", exc.message) from None
        except SwiftTrainerError as exc:
            if exc.code in ("concurrency_conflict", "integrity_error"):
                raise ApiProblem(
                    "conflict", f"webhook {webhook_id!r} exists already", status=409
                ) from None
            raise
        state = await _state(access, webhook_id)
        return CreatedWebhook(
            **msgspec.structs.asdict(_view(state)),
            secret=w.webhook_secret(access.signing_key, webhook_id),
        )

    @get("/", summary="List webhooks", responses=problems(503))
    async def list_webhooks(self, deps: Deps) -> WebhookList:
        access = _access(deps)
        caller = principal()
        found = []
        for stream_id in await streams_with_prefix(access.store, w.STREAM_PREFIX):
            state = await _state(access, stream_id.removeprefix(w.STREAM_PREFIX))
            if _visible(caller, state):
                found.append(_view(state))
        return WebhookList(data=found)

    @delete("/{webhook_id:str}", status_code=204, summary="Remove a webhook")
    async def remove(self, deps: Deps, webhook_id: WebhookIdPath) -> None:
        access = _access(deps)
        caller = principal()
        state = await _state(access, webhook_id)
        if not _visible(caller, state):
            raise _not_found(webhook_id)
        await remove_webhook(access.store, webhook_id, actor=caller.actor or "api")
