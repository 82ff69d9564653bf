"""Driver and SQLAlchemy errors turned into the store's own, so callers catch meaning.

Callers of the store see only the ``errors`` hierarchy (``ConcurrencyConflict`` <
``IntegrityError`` < ``StoreError``, ``SchemaVersionError``), never a driver exception.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import asyncpg
import msgspec
import sqlalchemy.exc as sa_exc

from swift_trainer.core.errors import IntegrityError, StoreError, SwiftTrainerError


@contextmanager
def store_errors(action: str) -> Iterator[None]:
    """Turn driver and SQLAlchemy errors into the store's own, so callers catch meaning."""
    try:
        yield
    except SwiftTrainerError:
        raise
    except (
        sa_exc.IntegrityError,
        sqlite3.IntegrityError,
        asyncpg.IntegrityConstraintViolationError,
    ) as exc:
        raise IntegrityError(f"{action} refused by the database: {_cause(exc)}") from exc
    except (
        sa_exc.SQLAlchemyError,
        sqlite3.Error,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        OSError,
    ) as exc:
        raise _unavailable(action, exc) from exc
    except msgspec.MsgspecError as exc:
        raise StoreError(
            f"{action} failed: a stored event's metadata does not decode ({exc})",
            code="store_corrupt",
        ) from exc


#: PostgreSQL's codes for "the schema is not there": undefined table, function, schema.
_MISSING_SCHEMA_STATES: Final = frozenset({"42P01", "42883", "3F000"})


def _sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL error code behind SQLAlchemy's and asyncpg's wrappers, if any."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        state = getattr(seen, "sqlstate", None)
        if isinstance(state, str):
            return state
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


def _unavailable(action: str, exc: BaseException) -> StoreError:
    text = _cause(exc)
    lowered = text.lower()
    if "no such table" in lowered or _sqlstate(exc) in _MISSING_SCHEMA_STATES:
        return StoreError(
            f"{action} failed: the event store has no schema yet ({text}); call setup() first",
            code="store_not_set_up",
        )
    if "database is locked" in lowered or "database is busy" in lowered:
        return StoreError(
            f"{action} failed: another writer held the SQLite database past busy_timeout "
            f"({text}); retry, or raise sqlite_busy_timeout",
            code="store_busy",
        )
    return StoreError(
        f"{action} failed: {text}; check the event store URL and that the database is reachable",
        code="store_unavailable",
    )


def _cause(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return f"{type(orig or exc).__name__}: {orig or exc}".splitlines()[0]
