"""Errors that carry meaning, not drivers.

Every error a user can see has a stable ``code`` (the API puts it into RFC 9457 problem
details, NATS replies carry it verbatim) and a message that says what to do next. Store
errors form a small hierarchy so callers catch "conflict", not "asyncpg.UniqueViolation".
"""

from __future__ import annotations


class SwiftTrainerError(Exception):
    """Root of every error this project raises on purpose."""

    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class DomainError(SwiftTrainerError):
    """A command the domain refuses; nothing was recorded."""

    code = "domain_error"


class JobNotFound(DomainError):
    code = "job_not_found"


class JobAlreadyExists(DomainError):
    code = "job_already_exists"


class InvalidTransition(DomainError):
    code = "invalid_transition"


class InvalidSpec(DomainError):
    code = "invalid_spec"


class NoCheckpoint(InvalidTransition):
    code = "no_checkpoint"


class CheckpointMissing(InvalidTransition):
    """The checkpoint asked for was recorded once but is gone from disk."""

    code = "checkpoint_missing"


class StaleAssignment(DomainError):
    """A runner reported on an attempt that is no longer the job's current one."""

    code = "stale_assignment"


class GpuTaken(DomainError):
    """A GPU claim overlaps GPUs another live job attempt holds in the GPU ledger."""

    code = "gpu_taken"


class MessageError(SwiftTrainerError):
    """A message on the wire could not be decoded or has an unknown type."""

    code = "malformed_message"


class UnknownMessageType(MessageError):
    code = "unknown_message_type"


class StoreError(SwiftTrainerError):
    """Something went wrong talking to the event store."""

    code = "store_error"


class IntegrityError(StoreError):
    code = "integrity_error"


class ConcurrencyConflict(IntegrityError):
    """The stream moved on since it was read: re-read, decide again, append again."""

    code = "concurrency_conflict"

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream_id!r} is at version {actual}, expected {expected}; "
            "reload the stream and retry the command",
        )
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class SchemaVersionError(StoreError):
    code = "schema_version_error"
