"""The caller of one request, as the guard established it.

Held in a context variable for the request's task, so code far from the handler
(``dispatch.send`` recording the actor, a submit stamping the owner) needs no extra
argument threaded through every route.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Final

import msgspec

from ...core.commands import Role


class Principal(msgspec.Struct, frozen=True):
    """``key_id`` None: authentication is off and the caller is the deployment's operator."""

    role: Role
    key_id: str | None = None
    owner: str | None = None

    @property
    def actor(self) -> str | None:
        return self.key_id

    def sees_everything(self) -> bool:
        """Admins and viewers see every job; a user sees their own."""
        return self.role != "user"

    def may_see(self, owner: str | None) -> bool:
        return self.sees_everything() or (owner is not None and owner == self.owner)

    def may_see_file(self, owner: str) -> bool:
        """An admin sees every file; any other key sees its own owner's (datasets are data)."""
        return self.role == "admin" or owner == self.owner

    def may_train_on(self, owner: str) -> bool:
        """A job trains only on its own owner's files; the keyless operator on any."""
        return self.key_id is None or owner == self.owner

    @property
    def file_owner(self) -> str:
        """The owner a file uploaded by this caller gets (``local`` without keys)."""
        return self.owner if self.key_id is not None and self.owner else LOCAL_OWNER


#: The owner of files uploaded without keys (authentication off, or the operator's CLI).
LOCAL_OWNER: Final = "local"

#: Authentication off: every caller acts as an admin without a key.
OPERATOR: Final = Principal(role="admin")

current_principal: ContextVar[Principal] = ContextVar("current_principal", default=OPERATOR)


def principal() -> Principal:
    return current_principal.get()
