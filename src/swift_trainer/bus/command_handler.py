"""The command handler service: NATS request in, decision, append, reply out.

Several handlers may run in one queue group, each with a cache of folded states; the
cache never decides alone. docs/architecture.md ("Many handlers") says why no update is
lost and how a retried command gets its first answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import trace
from opentelemetry.context import Context

from ..core import aggregates
from ..core.access import ACCESS_STREAM, AccessState
from ..core.clock import Clock, utc_now
from ..core.commands import SubmitJob
from ..core.errors import ConcurrencyConflict, DomainError, StoreError, SwiftTrainerError
from ..core.events import encode_event, event_type
from ..core.ids import GPU_LEDGER_STREAM, job_stream, new_id
from ..core.job import JobState
from ..core.store import AppendResult, CommandRecord, CommandStore, EventMetadata, NewEvent
from ..core.tasks import unsubscribe_quietly
from . import subjects
from .messages import (
    AccessAnswer,
    CommandEnvelope,
    CommandReply,
    JobStateAnswer,
    JobStateQuery,
    ReplyError,
    ReplyEvent,
    decode_envelope,
    encode,
    error_reply,
)
from .trace_headers import extract_context, trace_carrier

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)


def _reply_from_result(command_id: str, result: AppendResult) -> CommandReply:
    return CommandReply(
        command_id=command_id,
        ok=True,
        stream_id=result.stream_id,
        version=result.version,
        events=tuple(
            ReplyEvent(event_id=x.event_id, type=x.type, position=x.position, version=x.version)
            for x in result.events
        ),
        duplicate=result.duplicate,
    )


def _reply_from_record(record: CommandRecord, *, duplicate: bool = True) -> CommandReply:
    if record.error_code is not None:
        return CommandReply(
            command_id=record.command_id,
            ok=False,
            stream_id=record.stream_id,
            duplicate=duplicate,
            error=ReplyError(code=record.error_code, message=record.error_message or ""),
        )
    version = record.events[-1].version if record.events else None
    return CommandReply(
        command_id=record.command_id,
        ok=True,
        stream_id=record.stream_id,
        version=version,
        events=tuple(
            ReplyEvent(event_id=x.event_id, type=x.type, position=x.position, version=x.version)
            for x in record.events
        ),
        duplicate=duplicate,
    )


class _StreamLock:
    """Serialises commands of one stream inside a handler (fewer self-inflicted conflicts)."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


#: Told of every append that stored events (a relay's offer, the nudge of other relays).
AppendListener = Callable[[AppendResult], None]
#: Told of every executed command: its type name, the reply, and the seconds it took.
CommandObserver = Callable[[str, CommandReply, float], None]


class CommandHandler:
    """Decides and records commands; answers NATS requests on ``st.commands.>``."""

    def __init__(
        self,
        store: CommandStore,
        *,
        clock: Clock = utc_now,
        cache_size: int = 10_000,
        max_conflict_retries: int = 20,
        after_append: Sequence[AppendListener] = (),
        observer: CommandObserver | None = None,
        snapshot_every: int = 500,
    ) -> None:
        self.store = store
        self.clock = clock
        self.cache_size = cache_size
        self.max_conflict_retries = max_conflict_retries
        #: Called in this order after every append that stored events.
        self.after_append: tuple[AppendListener, ...] = tuple(after_append)
        self.observer = observer
        self.snapshot_every = snapshot_every
        self._snapshotted: dict[str, int] = {}
        self._states: OrderedDict[str, aggregates.State] = OrderedDict()
        self._locks: dict[str, _StreamLock] = {}
        self._subscription: Subscription | None = None
        self._query_subscription: Subscription | None = None
        self._access_subscription: Subscription | None = None
        self._nc: Client | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.malformed = 0

    # --- the decision, independent of NATS --------------------------------------------------

    async def _state(self, stream_id: str, *, assume_new: bool = False) -> aggregates.State:
        state = self._states.get(stream_id)
        if state is not None:
            self._states.move_to_end(stream_id)
            return state
        if assume_new:
            # A create almost always names a new stream: skip the read and let the append's
            # expected version (0) tell us otherwise; a conflict reloads and decides again.
            return aggregates.initial(stream_id)
        return await self._load(stream_id)

    async def _load(self, stream_id: str) -> aggregates.State:
        """Fold the stream from its snapshot (when it has one) or from its first event."""
        state: aggregates.State | None = None
        if self.snapshot_every and stream_id == GPU_LEDGER_STREAM:
            snapshot = await self.store.load_snapshot(stream_id)
            if snapshot is not None:
                state = aggregates.restore(stream_id, snapshot.payload)
                if state is None or aggregates.version_of(state) != snapshot.version:
                    _log.warning("ignoring an unreadable snapshot of %s", stream_id)
                    state = None
                else:
                    self._snapshotted[stream_id] = snapshot.version
        if state is None:
            state = aggregates.initial(stream_id)
        return await self._catch_up(stream_id, state)

    async def _catch_up(self, stream_id: str, state: aggregates.State) -> aggregates.State:
        """``state`` with the stored events after its version folded in, and cached."""
        newer = await self.store.read_stream(stream_id, after_version=aggregates.version_of(state))
        state = aggregates.fold(stream_id, newer, state)
        self._remember(stream_id, state)
        return state

    def _remember(self, stream_id: str, state: aggregates.State) -> None:
        self._states[stream_id] = state
        self._states.move_to_end(stream_id)
        while len(self._states) > self.cache_size:
            self._states.popitem(last=False)

    async def _maybe_snapshot(self, stream_id: str, state: aggregates.State) -> None:
        version = aggregates.version_of(state)
        if not self.snapshot_every or version - self._snapshotted.get(stream_id, 0) < (
            self.snapshot_every
        ):
            return
        payload = aggregates.snapshot_of(state)
        if payload is None:
            return
        self._snapshotted[stream_id] = version
        try:
            await self.store.save_snapshot(stream_id, version, payload)
        except StoreError:
            _log.warning("could not save a snapshot of %s at %d", stream_id, version, exc_info=True)

    @contextlib.asynccontextmanager
    async def _stream_lock(self, stream_id: str) -> AsyncIterator[None]:
        entry = self._locks.setdefault(stream_id, _StreamLock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                self._locks.pop(stream_id, None)

    async def job_state(self, job_id: str) -> JobStateAnswer:
        """The job as stored now: the cached state brought up to date by a read."""
        stream_id = job_stream(job_id)
        try:
            async with self._stream_lock(stream_id):
                cached = self._states.get(stream_id)
                state = (
                    await self._load(stream_id)
                    if cached is None
                    else await self._catch_up(stream_id, cached)
                )
        except StoreError as exc:
            return JobStateAnswer(job_id=job_id, error=ReplyError(exc.code, exc.message))
        assert isinstance(state, JobState)
        return JobStateAnswer(
            job_id=job_id,
            status=str(state.status),
            attempt=state.attempt,
            runner_id=state.runner_id,
            version=state.version,
        )

    async def access_state(self) -> AccessState:
        """The access stream (keys, quotas) as stored now."""
        async with self._stream_lock(ACCESS_STREAM):
            cached = self._states.get(ACCESS_STREAM)
            state = (
                await self._load(ACCESS_STREAM)
                if cached is None
                else await self._catch_up(ACCESS_STREAM, cached)
            )
        assert isinstance(state, AccessState)
        return state

    async def execute(
        self,
        envelope: CommandEnvelope,
        trace_context: dict[str, str] | Context | None = None,
    ) -> CommandReply:
        """Decide and record one command; never raises for a domain or store problem.

        ``trace_context`` is the sender's: the headers of a NATS request, or the context
        itself when the sender shares this process (nothing to serialise and parse).
        """
        command = envelope.command
        stream_id = aggregates.stream_of(command)
        name = type(command).__name__
        parent = (
            trace_context if isinstance(trace_context, Context) else extract_context(trace_context)
        )
        with _tracer.start_as_current_span(
            f"handle {name}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "command.type": name,
                "command.id": envelope.command_id,
                "stream": stream_id,
            },
        ) as span:
            started = time.perf_counter()
            try:
                async with self._stream_lock(stream_id):
                    reply = await self._execute(envelope, stream_id)
            except StoreError as exc:
                _log.exception("store error while handling %s %s", name, envelope.command_id)
                reply = error_reply(envelope.command_id, exc)
            if reply.error is not None:
                span.set_attribute("command.error", reply.error.code)
            if self.observer is not None:
                self.observer(name, reply, time.perf_counter() - started)
            return reply

    async def _execute(self, envelope: CommandEnvelope, stream_id: str) -> CommandReply:
        command_id = envelope.command_id
        state = await self._state(stream_id, assume_new=isinstance(envelope.command, SubmitJob))
        # Whether ``state`` has been checked against the store while handling this command;
        # a refusal or no-op is only answered from a checked state.
        fresh = False
        for _ in range(self.max_conflict_retries):
            now = self.clock()
            try:
                events = aggregates.decide_any(state, envelope.command, now)
            except DomainError as exc:
                if not fresh:
                    state, fresh = await self._catch_up(stream_id, state), True
                    continue
                record = await self.store.record_rejection(
                    command_id,
                    stream_id,
                    exc.code,
                    exc.message,
                )
                first = record.error_code == exc.code and record.error_message == exc.message
                return _reply_from_record(record, duplicate=not first)
            if not events:
                if not fresh:
                    state, fresh = await self._catch_up(stream_id, state), True
                    continue
                record = await self.store.record_noop(command_id, stream_id)
                first = record.error_code is None and not record.events
                return _reply_from_record(record, duplicate=not first)
            try:
                result = await self._append(envelope, stream_id, state, events)
            except ConcurrencyConflict:
                state, fresh = await self._catch_up(stream_id, state), True
                continue
            if result.duplicate:
                self._states.pop(stream_id, None)
                earlier = await self.store.find_command(command_id)
                if earlier is not None:
                    return _reply_from_record(earlier)
                return _reply_from_result(command_id, result)
            for event in events:
                state = aggregates.apply(state, event)
            self._remember(stream_id, state)
            await self._maybe_snapshot(stream_id, state)
            for listener in self.after_append:
                listener(result)
            return _reply_from_result(command_id, result)
        return error_reply(
            command_id,
            SwiftTrainerError(
                f"stream {stream_id} kept changing during {self.max_conflict_retries} tries; "
                "retry the command",
                code="concurrency_conflict",
            ),
        )

    async def _append(
        self,
        envelope: CommandEnvelope,
        stream_id: str,
        state: aggregates.State,
        events: Sequence[aggregates.AnyStoredEvent],
    ) -> AppendResult:
        metadata = EventMetadata(
            command_id=envelope.command_id,
            correlation_id=envelope.correlation_id or envelope.command_id,
            causation_id=envelope.causation_id or envelope.command_id,
            trace=trace_carrier(),
            actor=envelope.actor,
        )
        new_events = [
            NewEvent(
                event_id=new_id(),
                type=event_type(event),
                payload=encode_event(event),
                schema_version=type(event).schema_version,
                metadata=metadata,
            )
            for event in events
        ]
        with _tracer.start_as_current_span(
            "event store append",
            attributes={"stream": stream_id, "events": len(new_events)},
        ):
            return await self.store.append(
                stream_id,
                new_events,
                expected_version=aggregates.version_of(state),
                command_id=envelope.command_id,
            )

    # --- the NATS shell ---------------------------------------------------------------------

    async def start(self, nc: Client, *, max_in_flight: int = 256) -> None:
        self._nc = nc
        semaphore = asyncio.Semaphore(max_in_flight)

        async def on_message(msg: Msg) -> None:
            await semaphore.acquire()
            task = asyncio.create_task(self._serve(msg))
            self._tasks.add(task)

            def done(finished: asyncio.Task[None]) -> None:
                self._tasks.discard(finished)
                semaphore.release()

            task.add_done_callback(done)

        self._subscription = await nc.subscribe(
            f"{subjects.COMMANDS}.>",
            queue=subjects.COMMAND_HANDLERS_QUEUE,
            cb=on_message,
            pending_msgs_limit=65_536,
        )
        self._query_subscription = await nc.subscribe(
            subjects.JOB_STATE_QUERY,
            queue=subjects.COMMAND_HANDLERS_QUEUE,
            cb=self._on_query,
        )
        self._access_subscription = await nc.subscribe(
            subjects.ACCESS_QUERY,
            queue=subjects.COMMAND_HANDLERS_QUEUE,
            cb=self._on_access_query,
        )
        await nc.flush()  # the subscriptions are live on the server before start() returns

    async def _serve(self, msg: Msg) -> None:
        try:
            envelope = decode_envelope(msg.data)
        except SwiftTrainerError as exc:
            self.malformed += 1
            _log.warning("rejected malformed command on %s: %s", msg.subject, exc)
            reply = error_reply("", exc)
        else:
            try:
                reply = await self.execute(envelope, msg.headers)
            except Exception as exc:  # the handler must survive anything a message causes
                _log.exception("unexpected error handling command %s", envelope.command_id)
                reply = error_reply(envelope.command_id, SwiftTrainerError(repr(exc)))
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(encode(reply))

    async def _on_query(self, msg: Msg) -> None:
        try:
            query = msgspec.json.decode(msg.data, type=JobStateQuery)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self.malformed += 1
            _log.warning("rejected a malformed job state query: %s", exc)
            answer = JobStateAnswer(job_id="", error=ReplyError("malformed_message", str(exc)))
        else:
            try:
                answer = await self.job_state(query.job_id)
            except Exception as exc:  # the handler must survive anything a message causes
                _log.exception("unexpected error answering the state of %s", query.job_id)
                answer = JobStateAnswer(
                    job_id=query.job_id, error=ReplyError("internal", repr(exc))
                )
        if msg.reply:
            try:
                await msg.respond(encode(answer))
            except Exception as exc:
                _log.warning("could not answer a job state query: %r", exc)

    async def _on_access_query(self, msg: Msg) -> None:
        try:
            answer = AccessAnswer(state=await self.access_state())
        except Exception as exc:  # the handler must survive anything a message causes
            _log.warning("could not answer an access query: %r", exc)
            answer = AccessAnswer(error=ReplyError(getattr(exc, "code", "internal"), str(exc)))
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(encode(answer))

    async def stop(self) -> None:
        await unsubscribe_quietly(self._access_subscription)
        self._access_subscription = None
        await unsubscribe_quietly(self._query_subscription)
        self._query_subscription = None
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.drain()  # type: ignore[no-untyped-call]
            self._subscription = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
