"""Process trees as real processes: who the trainers are, and one host scan for many trees."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from tests.runner.runner_helpers import RecordingReporter, alive, tree_pids

from swift_trainer.runner import process_tree
from swift_trainer.runner.process_tree import ProcessTree, live_pids
from swift_trainer.runner.run_state import RunRecord
from swift_trainer.runner.supervisor import Supervisor


def test_trainers_are_found_below_launchers_and_above_helpers(tmp_path: Path) -> None:
    """swift -> [torchrun ->] ranks; a rank's forks and own programs are not trainers."""
    sleep = "import time; time.sleep(30)"
    (tmp_path / "helper.py").write_text(sleep)
    (tmp_path / "rank.py").write_text(
        textwrap.dedent(f"""
            import os, subprocess, sys, time
            if os.fork() == 0:  # a DataLoader worker
                time.sleep(30)
                os._exit(0)
            subprocess.Popen([sys.executable, {str(tmp_path / "helper.py")!r}])  # a compiler
            time.sleep(30)
        """),
    )
    (tmp_path / "launch.py").write_text(
        textwrap.dedent(f"""
            import subprocess, sys, time
            ranks = int(sys.argv[1])
            if ranks == 1:
                subprocess.Popen([sys.executable, {str(tmp_path / "rank.py")!r}])
            else:  # like swift/cli/main.py starting torchrun, which starts the ranks
                agent = "import subprocess, sys, time; " + "; ".join(
                    [f"subprocess.Popen([sys.executable, {str(tmp_path / "rank.py")!r}])"] * ranks
                ) + "; time.sleep(30)"
                subprocess.Popen([sys.executable, "-c", agent, "torch.distributed.run"])
            time.sleep(30)
        """),
    )
    for ranks, expected_size in ((1, 4), (2, 8)):
        leader = subprocess.Popen(
            [sys.executable, str(tmp_path / "launch.py"), str(ranks)],
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 20
            while len(tree_pids(leader.pid)) < expected_size:
                assert time.monotonic() < deadline, tree_pids(leader.pid)
                time.sleep(0.02)
            proc = psutil.Process(leader.pid)
            tree = ProcessTree(leader.pid, leader.pid, proc.create_time(), {})
            trainers = tree.trainers()
            assert len(trainers) == ranks
            for trainer in trainers:
                assert trainer.cmdline()[-1].endswith("rank.py")
                assert trainer.parent().pid != leader.pid or ranks == 1
            pids = tree_pids(leader.pid)
            tree.signal(signal.SIGKILL)
            leader.wait()
            deadline = time.monotonic() + 10
            while any(alive(pid) for pid in pids):
                assert time.monotonic() < deadline
                time.sleep(0.02)
        finally:
            if leader.poll() is None:
                leader.kill()
                leader.wait()


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two session leaders, each with a child in its session; all killed at the end."""
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); time.sleep(30)"
    )
    leaders = [
        subprocess.Popen([sys.executable, "-c", code], start_new_session=True) for _ in range(2)
    ]
    try:
        for leader in leaders:
            deadline = time.monotonic() + 20
            while len(tree_pids(leader.pid)) < 2:
                assert time.monotonic() < deadline, tree_pids(leader.pid)
                time.sleep(0.02)
        yield leaders
    finally:
        for leader in leaders:
            tree = ProcessTree(leader.pid, leader.pid, psutil.Process(leader.pid).create_time(), {})
            tree.signal(signal.SIGKILL)
            leader.wait()


def _tree(leader: subprocess.Popen[bytes]) -> ProcessTree:
    return ProcessTree(leader.pid, leader.pid, psutil.Process(leader.pid).create_time(), {})


def test_live_pids_scans_the_host_once_for_every_tree(
    sessions: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    scans = 0
    real = psutil.process_iter

    def counting(*args: object, **kwargs: object) -> Iterator[psutil.Process]:
        nonlocal scans
        scans += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    trees = [_tree(leader) for leader in sessions]
    monkeypatch.setattr(process_tree.psutil, "process_iter", counting)
    pids = live_pids(trees)
    assert scans == 1
    assert pids == set().union(*(set(tree_pids(leader.pid)) for leader in sessions))
    assert len(pids) == 4
    assert live_pids([]) == set()
    assert scans == 1  # nothing to look for: no scan at all


async def test_own_pids_async_scans_in_a_worker_thread(
    sessions: list[subprocess.Popen[bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sup = Supervisor(state_dir=tmp_path / "state")
    for index, leader in enumerate(sessions):
        sup.store.save(
            RunRecord(
                kind="job",
                job_id=f"job-{index}",
                pid=leader.pid,
                sid=leader.pid,
                create_time=psutil.Process(leader.pid).create_time(),
                argv=(),
                output_dir=str(tmp_path),
                stdout_path=str(tmp_path / "out"),
                stderr_path=str(tmp_path / "err"),
            )
        )
    reporter = RecordingReporter()
    records = await sup.reattach(
        job_reporter=lambda r: reporter, export_reporter=lambda r: reporter
    )
    assert len(records) == 2
    threads: list[threading.Thread] = []
    real = process_tree.scan_host

    def recording() -> process_tree.HostScan:
        threads.append(threading.current_thread())
        return real()

    monkeypatch.setattr(process_tree, "scan_host", recording)
    try:
        pids = await sup.own_pids_async()
        assert len(threads) == 1
        assert threads[0] is not threading.current_thread()
        assert pids == sup.own_pids()
        assert len(pids) == 4
    finally:
        await sup.close()  # stops watching; the fixture kills the processes
