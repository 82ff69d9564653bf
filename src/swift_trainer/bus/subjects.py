"""Every NATS subject, stream, bucket and queue-group name the system uses, in one place.

Event subjects carry four tokens after the prefix so that one publish serves every filter:

    st.events.<kind>.<runner|_>.<stream key>.<EventType>

- all events of a job:          ``st.events.job.*.<job_id>.*``
- one event type:               ``st.events.*.*.*.JobSucceeded``
- what one runner must act on:  ``st.events.job.<runner_id>.>`` (start, stop, export)

Only events addressed to a runner (``JobScheduled``, ``StopRequested``, ``ExportRequested``)
carry a runner token; all others carry ``_``. Ids are restricted to ``[A-Za-z0-9_-]``, so a
token never contains a dot or a wildcard.
"""

from __future__ import annotations

import re
from typing import Final

PREFIX: Final = "st"

COMMANDS: Final = f"{PREFIX}.commands"
COMMAND_HANDLERS_QUEUE: Final = "command-handlers"

EVENTS_STREAM: Final = "EVENTS"
EVENTS_ROOT: Final = f"{PREFIX}.events"
EVENTS_ALL: Final = f"{EVENTS_ROOT}.>"

LOGS_STREAM: Final = "LOGS"
LOGS_ROOT: Final = f"{PREFIX}.logs"
LOGS_ALL: Final = f"{LOGS_ROOT}.>"

#: Reads answered by the command handlers from the store (never from a cache alone).
JOB_STATE_QUERY: Final = f"{PREFIX}.queries.job-state"
#: The access stream folded (API keys with their hashes, quotas): for APIs and ``keys list``.
ACCESS_QUERY: Final = f"{PREFIX}.queries.access"

#: Core-NATS nudge after an append, so the relay publishes at once instead of polling.
APPENDED: Final = f"{PREFIX}.internal.appended"

RUNNERS_BUCKET: Final = "st_runners"
SCHEDULER_LEASE_BUCKET: Final = "st_scheduler_lease"

NO_RUNNER: Final = "_"
_TOKEN: Final = re.compile(r"^[A-Za-z0-9_-]+$")

#: Events a runner acts on, published under its runner token.
RUNNER_ADDRESSED: Final = frozenset(
    {"JobScheduled", "StopRequested", "ExportRequested", "RankStartRequested"}
)


def is_token(value: str) -> bool:
    return bool(_TOKEN.fullmatch(value))


def command_subject(command_type: str) -> str:
    return f"{COMMANDS}.{command_type}"


def event_subject(stream_id: str, event_type: str, runner_id: str | None = None) -> str:
    """Subject for a stored event; ``stream_id`` is ``job-<id>`` or a singleton stream."""
    if stream_id.startswith("job-"):
        kind, key = "job", stream_id[4:]
    else:
        kind, key = "system", stream_id
    runner = runner_id if runner_id and event_type in RUNNER_ADDRESSED else NO_RUNNER
    return f"{EVENTS_ROOT}.{kind}.{runner}.{key}.{event_type}"


def job_events_filter(job_id: str) -> str:
    return f"{EVENTS_ROOT}.job.*.{job_id}.*"


def event_type_filter(event_type: str) -> str:
    return f"{EVENTS_ROOT}.*.*.*.{event_type}"


def runner_events_filter(runner_id: str) -> str:
    return f"{EVENTS_ROOT}.job.{runner_id}.>"


def log_subject(job_id: str) -> str:
    return f"{LOGS_ROOT}.{job_id}"
