"""The processes of one run: found through the tree and the session, signalled together.

Each run starts in its own session (``start_new_session=True``): the ``swift`` launcher,
torchrun, every trainer rank and their DataLoader workers share one session and process
group, the handle for killing all of them. Processes are remembered with their create time,
so a reused pid is never signalled. ``docs/architecture.md`` says why a stop signals the
trainers first (``ProcessTree.trainers``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import psutil


@dataclass(frozen=True)
class HostScan:
    """One pass over the host's processes, grouped by session and by parent.

    A pass reads ``/proc`` for every process on the host, so a caller that looks at several
    trees at once (``Supervisor.own_pids``) shares one instead of two per tree.
    """

    sessions: Mapping[int, Sequence[psutil.Process]]
    children: Mapping[int, Sequence[psutil.Process]]

    def descendants(self, parent: psutil.Process) -> list[psutil.Process]:
        """Like ``parent.children(recursive=True)``, without another pass over ``/proc``."""
        found: list[psutil.Process] = []
        stack = [parent]
        seen = {parent.pid}
        while stack:
            proc = stack.pop()
            for child in self.children.get(proc.pid, ()):
                if child.pid in seen:
                    continue
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    if child.create_time() >= proc.create_time():  # not a reused pid
                        seen.add(child.pid)
                        found.append(child)
                        stack.append(child)
        return found


def scan_host() -> HostScan:
    """Every process on the host by session and by parent: one ``process_iter`` pass
    (liveness is checked later, for the members of our runs only)."""
    sessions: dict[int, list[psutil.Process]] = {}
    children: dict[int, list[psutil.Process]] = {}
    for proc in psutil.process_iter():
        try:
            sid = os.getsid(proc.pid)
            ppid = proc.ppid()
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        sessions.setdefault(sid, []).append(proc)
        children.setdefault(ppid, []).append(proc)
    return HostScan(sessions, children)


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie: an orphan's zombie waits for an init that may never reap."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _process(pid: int, create_time: float) -> psutil.Process | None:
    """The live process with this pid *and* create time; a reused pid is someone else."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 0.05:
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return proc if _alive(proc) else None


def live_pids(trees: Sequence[ProcessTree]) -> set[int]:
    """The pids of every live process of ``trees``, from one shared scan of the host.

    Blocking (it reads ``/proc``): the event loop runs it in a thread.
    """
    if not trees:
        return set()
    scan = scan_host()
    pids: set[int] = set()
    for tree in trees:
        tree.refresh(scan)
        pids.update(proc.pid for proc in tree.alive(scan))
    return pids


class ProcessTree:
    """Every process one run spawned, found through the tree and through the session.

    The tree alone misses trainer ranks once their parent (the launcher) has died and
    they were re-parented; the session alone misses a child that called ``setsid``.
    Processes are remembered with their create time as they are seen, so they can be
    signalled after their parent is gone.
    """

    def __init__(self, pid: int, sid: int, create_time: float, known: dict[int, float]) -> None:
        self.pid = pid
        self.sid = sid
        self.create_time = create_time
        self.known: dict[int, float] = {pid: create_time, **known}

    def _session_is_ours(self) -> bool:
        """A session id is a pid; once our leader is gone and its pid reused by a new
        session leader, that session is someone else's."""
        try:
            leader = psutil.Process(self.sid)
        except psutil.NoSuchProcess:
            return True
        try:
            return abs(leader.create_time() - self.create_time) <= 0.05 or self.sid != self.pid
        except psutil.NoSuchProcess:
            return True

    def _session_members(self, scan: HostScan | None = None) -> list[psutil.Process]:
        """The session's live processes, from ``scan`` (a shared one) or a scan of its own."""
        if not self._session_is_ours():
            return []
        if scan is not None:
            return [proc for proc in scan.sessions.get(self.sid, ()) if _alive(proc)]
        members = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == self.sid and _alive(proc):
                    members.append(proc)
            except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
                continue
        return members

    def _remember(self, proc: psutil.Process) -> None:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            self.known.setdefault(proc.pid, proc.create_time())

    def refresh(self, scan: HostScan | None = None) -> None:
        """Remember every process now in the tree or the session (``scan``: a shared one)."""
        leader = _process(self.pid, self.create_time)
        if leader is not None:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                tree = scan.descendants(leader) if scan else leader.children(recursive=True)
                for child in tree:
                    self._remember(child)
        for member in self._session_members(scan):
            self._remember(member)

    def leader_alive(self) -> bool:
        return _process(self.pid, self.create_time) is not None

    def alive(self, scan: HostScan | None = None) -> list[psutil.Process]:
        """Every live process of the run, remembered or in the session (``scan``: a shared
        one)."""
        found: dict[int, psutil.Process] = {}
        for pid, created in list(self.known.items()):
            proc = _process(pid, created)
            if proc is not None:
                found[pid] = proc
        for member in self._session_members(scan):
            found.setdefault(member.pid, member)
            self._remember(member)
        return list(found.values())

    def trainers(self) -> list[psutil.Process]:
        """The processes that run the training script: the ones to ask for a graceful stop.

        Walking down from the launcher through exec'd children (a child whose command line
        differs from its parent's), launchers are passed through: the run's leader when it
        started a program of its own (``swift`` runs ``sft.py``), and torchrun. Their
        first exec'd descendant that is not a launcher is a trainer. That skips the
        launcher (it dies on SIGTERM and orphans its child), torchrun (it SIGKILLs its
        ranks 30 s after its own SIGTERM, whatever they are saving), the ranks' forked
        DataLoader workers (one killed by a signal makes its rank raise "DataLoader worker
        exited unexpectedly" before the checkpoint is written) and anything a rank runs
        itself (compiler workers). Orphans whose parent is gone are walked from where
        they are.
        """
        procs = {p.pid: p for p in self.alive()}
        found: list[psutil.Process] = []

        def execd_children(
            proc: psutil.Process, command: tuple[str, ...] | None
        ) -> list[psutil.Process]:
            try:
                children = proc.children()
            except psutil.NoSuchProcess:
                return []
            result = []
            for child in children:
                child_command = _cmdline(child)
                if child.pid not in procs or child_command is None or child_command == command:
                    continue
                if not _is_multiprocessing_helper(child_command):
                    result.append(child)
            return result

        def visit(proc: psutil.Process, is_leader: bool) -> None:
            command = _cmdline(proc)
            children = execd_children(proc, command)
            if command is not None and (_is_launcher(command) or (is_leader and children)):
                for child in children:
                    visit(child, is_leader=False)
            elif command is not None:
                found.append(proc)

        for proc in procs.values():
            try:
                parent = proc.ppid()
            except psutil.NoSuchProcess:
                continue
            if parent not in procs:
                visit(proc, is_leader=proc.pid == self.pid)
        return found

    def signal(self, signum: int, *, trainers_only: bool = False) -> list[int]:
        """Signal the trainers, or every live process youngest (deepest) first and then
        the process group; returns the pids signalled."""
        self.refresh()
        targets = self.trainers() if trainers_only else []
        if not targets:
            targets = self.alive()
            trainers_only = False

        def age(proc: psutil.Process) -> float:
            return self.known.get(proc.pid, 0.0)

        signalled = []
        for proc in sorted(targets, key=age, reverse=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                proc.send_signal(signum)
                signalled.append(proc.pid)
        if not trainers_only and self._session_is_ours():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.sid, signum)
        return signalled


def _cmdline(proc: psutil.Process) -> tuple[str, ...] | None:
    try:
        return tuple(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


_LAUNCHER_MARKERS: Final = ("torch.distributed.run", "torchrun", "torch.distributed.launch")


def _is_launcher(command: tuple[str, ...]) -> bool:
    return any(marker in part for part in command[:4] for marker in _LAUNCHER_MARKERS)


def _is_multiprocessing_helper(command: tuple[str, ...]) -> bool:
    """Spawned (not forked) DataLoader workers and multiprocessing's own helpers."""
    text = " ".join(command)
    return (
        "multiprocessing.spawn" in text
        or "multiprocessing.resource_tracker" in text
        or ("multiprocessing.forkserver" in text)
    )
