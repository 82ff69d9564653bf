"""Job read models: projections of the event stream that the API serves reads from.

``ReadModel`` is the contract; ``MemoryReadModel`` (embedded mode) and ``RedisReadModel``
(distributed mode) keep it, driven by the same pure planner in ``projection``.
"""

from .interface import (
    MAX_PAGE_SIZE,
    InvalidCursor,
    ReadModel,
    ReadModelConflict,
    ReadModelError,
)
from .memory import MemoryReadModel
from .redis import DEFAULT_PREFIX, RedisReadModel
from .replay import EventLog, catch_up, rebuild
from .views import (
    EventLogEntry,
    JobFold,
    JobPage,
    JobSummary,
    Limits,
    LogLine,
    MetricPoint,
    ProgressView,
    QueueEntry,
    QueueView,
    ReadModelSnapshot,
    RunnerSnapshot,
)

__all__ = [
    "DEFAULT_PREFIX",
    "MAX_PAGE_SIZE",
    "EventLog",
    "EventLogEntry",
    "InvalidCursor",
    "JobFold",
    "JobPage",
    "JobSummary",
    "Limits",
    "LogLine",
    "MemoryReadModel",
    "MetricPoint",
    "ProgressView",
    "QueueEntry",
    "QueueView",
    "ReadModel",
    "ReadModelConflict",
    "ReadModelError",
    "ReadModelSnapshot",
    "RedisReadModel",
    "RunnerSnapshot",
    "catch_up",
    "rebuild",
]
