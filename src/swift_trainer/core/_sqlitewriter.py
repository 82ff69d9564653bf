"""SQLite's single writer as a dedicated thread with its own connection (group commit).

Why a thread of our own instead of aiosqlite's: every aiosqlite call is a trip through a
``queue.Queue``, a worker thread and ``call_soon_threadsafe``, and the store added an
asyncio lock and a held-connection checkout around it; measured, that per-append hand-off
cost more than the append's own SQL. Here an append is one ``SimpleQueue.put`` and one
wake-up of the event loop, and the thread owns a plain ``sqlite3`` connection.

Group commit: the thread takes every request queued while it was busy and commits all the
appends among them in one transaction (one fsync at ``synchronous=FULL``), each inside its
own SAVEPOINT, so each gets exactly the answer it would have got alone
(``sqlite_append_group``). An append that finds the queue empty runs alone
(``sqlite_append``). The other writes (tracking, snapshots, refusals) run on the same
thread in their own transactions, so this process's writers never meet in SQLite's busy
handler, which sleeps in steps of milliseconds; other processes sharing the file still
wait there, up to ``busy_timeout``.

Durability is unchanged: the connection runs WAL with the store's ``synchronous`` setting,
and a caller's future is settled only after ``COMMIT`` returned.

The thread remembers what it committed last (``SqliteHead``: the chain's last link, its
streams' versions), checked against ``PRAGMA data_version`` under the write lock, so an
append does not read them back; any other commit to the file, or any statement run here
for a caller, makes it read them again.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from swift_trainer.core._sqlappend import (
    AppendRequest,
    SqliteHead,
    sqlite_append,
    sqlite_append_group,
)
from swift_trainer.core.errors import StoreError, SwiftTrainerError
from swift_trainer.core.store import AppendResult

__all__ = ["SqliteWriter"]

T = TypeVar("T")

#: Most requests one transaction commits; bounds how long one group holds the write lock.
_MAX_GROUP: Final = 256


@dataclass(frozen=True, slots=True)
class _Job:
    """One request for the writer: an append, or a statement run in its own transaction."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    append: AppendRequest | None = None
    statement: Callable[[sqlite3.Connection], object] | None = None


_STOP: Final = object()


def _settle(outcomes: Sequence[tuple[asyncio.Future[Any], object, bool]]) -> None:
    """On the event loop: hand each caller its result or error (unless it gave up)."""
    for future, outcome, failed in outcomes:
        if future.done():
            continue
        if failed:
            assert isinstance(outcome, BaseException)
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class SqliteWriter:
    """The one thread that writes to a SQLite event store file from this process.

    Started on first use and stopped by :meth:`close`; a daemon thread, so a store that is
    never closed cannot keep the interpreter alive.
    """

    def __init__(self, path: str, *, synchronous: str, busy_timeout: float) -> None:
        self._path = path
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._transactions = 0
        #: Touched only by the thread: what its connection committed last.
        self._head = SqliteHead()

    async def append(self, request: AppendRequest) -> AppendResult:
        """Append on the writer thread; raises what ``sqlite_append`` raises."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AppendResult] = loop.create_future()
        self._submit(_Job(loop, future, append=request))
        return await future

    async def execute(self, sql: str, params: Sequence[object]) -> None:
        """Run one statement in its own write transaction on the writer thread."""

        def statement(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(sql, params)
                conn.commit()
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise

        await self.call(statement)

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` with the writer's connection, on its thread, between two groups."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._submit(_Job(loop, future, statement=fn))
        return await future

    @property
    def transactions(self) -> int:
        """Append transactions committed so far (a group counts once): how well appends
        are grouped, for tests and benchmarks."""
        return self._transactions

    def _submit(self, job: _Job) -> None:
        if self._closed:
            raise StoreError("the event store is closed", code="store_closed")
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    thread = threading.Thread(
                        target=self._run, name="sqlite-event-store-writer", daemon=True
                    )
                    thread.start()
                    self._thread = thread
        self._queue.put(job)

    async def close(self) -> None:
        """Finish what is queued, then stop the thread and close its connection."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.to_thread(thread.join)

    # --- the thread -----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self._head.forget()
        conn = sqlite3.connect(
            self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=True
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        return conn

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                jobs: list[_Job] = [first]  # type: ignore[list-item]
                stop = False
                while len(jobs) < _MAX_GROUP:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stop = True
                        break
                    jobs.append(more)  # type: ignore[arg-type]
                if conn is None:
                    try:
                        conn = self._connect()
                    except sqlite3.Error as exc:
                        self._reply([(job, exc, True) for job in jobs])
                        if stop:
                            return
                        continue
                self._reply(self._process(conn, jobs))
                if stop:
                    return
        finally:
            if conn is not None:
                conn.close()

    def _process(
        self, conn: sqlite3.Connection, jobs: list[_Job]
    ) -> list[tuple[_Job, object, bool]]:
        """Run the jobs in order: runs of appends as groups, statements one by one."""
        done: list[tuple[_Job, object, bool]] = []
        run: list[_Job] = []

        def flush() -> None:
            if run:
                done.extend(self._append_group(conn, run))
                run.clear()

        for job in jobs:
            if job.append is not None:
                run.append(job)
                continue
            flush()
            assert job.statement is not None
            # A statement of any kind may change what the head remembers: read it afresh.
            self._head.forget()
            try:
                done.append((job, job.statement(conn), False))
            except Exception as exc:
                done.append((job, exc, True))
        flush()
        return done

    def _append_group(
        self, conn: sqlite3.Connection, jobs: list[_Job]
    ) -> list[tuple[_Job, object, bool]]:
        self._transactions += 1
        requests = [job.append for job in jobs if job.append is not None]
        if len(requests) == 1:
            try:
                return [(jobs[0], sqlite_append(conn, requests[0], self._head), False)]
            except Exception as exc:
                return [(jobs[0], exc, True)]
        try:
            outcomes = sqlite_append_group(conn, requests, self._head)
        except Exception as exc:
            return [(job, exc, True) for job in jobs]
        return [
            (job, outcome, isinstance(outcome, SwiftTrainerError))
            for job, outcome in zip(jobs, outcomes, strict=True)
        ]

    @staticmethod
    def _reply(done: list[tuple[_Job, object, bool]]) -> None:
        """One wake-up per event loop for the whole group."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], object, bool]]]
        by_loop = {}
        for job, outcome, failed in done:
            by_loop.setdefault(job.loop, []).append((job.future, outcome, failed))
        for loop, outcomes in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, outcomes)
            except RuntimeError:
                # That loop is closed: nobody is waiting for these answers any more.
                continue
