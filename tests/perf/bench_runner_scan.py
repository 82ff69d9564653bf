"""Benchmark of the runner's blocking work: host process scans and log-file tail reads.

Run: ``uv run python tests/perf/bench_runner_scan.py [--runs 8]`` (not collected by pytest).

Figures:
- ``per-tree scans``: what one ``own_pids`` cost before: ``refresh`` and ``alive`` of every
  run, each with its own scan of the host's processes (2 x runs scans);
- ``shared scan``: ``live_pids``, one scan for all runs (what ``own_pids`` does now, and in a
  worker thread from the event loop);
- ``longest tail read``: the longest single blocking read while a 64 MiB backlog of output
  is tailed, unbounded (one read) versus in 1 MiB chunks (the loop runs between chunks).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from swift_trainer.runner.log_tail import MAX_READ_BYTES, LineTail
from swift_trainer.runner.process_tree import ProcessTree, live_pids

CHILD = (
    "import subprocess, sys, time; "
    + "; ".join(["subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])"] * 3)
    + "; time.sleep(120)"
)


def timed(fn: Callable[[], object], repeat: int = 20) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def scans(runs: int) -> None:
    leaders = [
        subprocess.Popen([sys.executable, "-c", CHILD], start_new_session=True) for _ in range(runs)
    ]
    try:
        time.sleep(1.5)
        trees = [
            ProcessTree(p.pid, p.pid, psutil.Process(p.pid).create_time(), {}) for p in leaders
        ]

        def per_tree() -> set[int]:
            pids: set[int] = set()
            for tree in trees:
                tree.refresh()
                pids.update(proc.pid for proc in tree.alive())
            return pids

        assert per_tree() == live_pids(trees)
        host = len(psutil.pids())
        print(f"runs={runs} processes per run=4 host processes={host}")
        print(f"per-tree scans: {timed(per_tree):8.2f} ms per own_pids ({2 * runs} scans)")
        print(f"shared scan:    {timed(lambda: live_pids(trees)):8.2f} ms per own_pids (1 scan)")
    finally:
        for leader in leaders:
            os.killpg(leader.pid, signal.SIGKILL)
            leader.wait()


def tails() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "out.log"
        line = b"x" * 119 + b"\n"
        path.write_bytes(line * (64 * 1024 * 1024 // len(line)))
        size = path.stat().st_size
        for label, limit in (("unbounded", size + 1), ("1 MiB chunks", MAX_READ_BYTES)):
            tail = LineTail(path, max_read=limit)
            longest = 0.0
            while True:
                start = time.perf_counter()
                tail.poll()
                longest = max(longest, time.perf_counter() - start)
                if tail.at_end:
                    break
            print(f"longest tail read, {label:12}: {longest * 1000:8.2f} ms (64 MiB backlog)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    print(f"cpus={os.cpu_count()}")
    scans(args.runs)
    tails()


if __name__ == "__main__":
    main()
