"""A chatty job: 1,000 log lines a second through the real runner, NATS and API.

    uv run python tests/perf/bench_logs.py [--seconds 60] [--rate 1000]

Starts a nats-server as ``up`` embeds it (JetStream flushed every second; ``--unsynced``
for NATS's default of two minutes) and ``swift-trainer up`` on it (SQLite;
the read models in Redis, ``BENCH_REDIS_URL`` under a throwaway prefix) with one simulated
GPU, and submits one job whose simulated trainer writes ``--rate`` numbered
lines a second to stdout, each stamped with the time it was written
(``--simulate-log-lines-per-second``), for ``--seconds`` (``--seconds 3600`` is the
issue's hour). The runner tails the file and publishes each line on the LOGS stream; the
log feed stores them in Redis; the bench follows ``GET /jobs/{id}/logs/stream`` (SSE) and
measures, against the issue's goals (issue 16, item 5):

- line written -> line received over SSE: p50, p99, max (goal p99 < 500 ms);
- whether the runner keeps up: lines written (counted in the job's stdout file) against
  lines on the LOGS stream and lines seen over SSE, and the lag over time;
- the caps: the job's Redis log buffer (``Limits.log_lines``) and the LOGS stream
  (``max_bytes``, ``max_age``, ``max_msgs_per_subject`` per job) against what they hold at
  the end, and what an hour at this rate writes and holds, extrapolated from the measured
  bytes per line and per message.

Everything it starts is stopped and everything it creates (folders, Redis keys) is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
import redis
from perf_processes import Component, UnsyncedNatsServer, http_ready

from swift_trainer.bus import subjects
from swift_trainer.bus.connection import logs_stream_config
from swift_trainer.bus.embedded import EmbeddedNatsServer, free_port
from swift_trainer.bus.messages import decode_log_payload
from swift_trainer.projections.read_models.views import Limits

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
API = "/api/v1/training"
CHATTER = re.compile(r"\[INFO:swift\] chatter (\d+) at ([\d.]+) ")
#: Seconds per simulated step: the job trains for ``--seconds`` in steps this long.
STEP_S = 0.5


@dataclass
class Followed:
    """What the SSE follower saw: each chatter line's number and its delay."""

    seen: set[int] = field(default_factory=set)
    delays_ms: list[float] = field(default_factory=list)
    #: (seconds since the first line, delay in ms) every 1,000th line: the lag over time.
    trend: list[tuple[float, float]] = field(default_factory=list)
    other_lines: int = 0


def follow(base: str, job_id: str, until: float, out: Followed) -> None:
    """Read the job's SSE log stream until it ends or ``until`` (monotonic) passes."""
    first: float | None = None
    with (
        httpx.Client(base_url=base, timeout=httpx.Timeout(10, read=30)) as client,
        client.stream("GET", f"/jobs/{job_id}/logs/stream", params={"after": -1}) as response,
    ):
        response.raise_for_status()
        for raw in response.iter_lines():
            if time.monotonic() > until:
                return
            if not raw.startswith("data:"):
                continue
            received = time.time()
            line = json.loads(raw[5:])
            match = CHATTER.match(line.get("text", ""))
            if match is None:
                out.other_lines += 1
                continue
            number, written = int(match[1]), float(match[2])
            delay = (received - written) * 1000
            out.seen.add(number)
            out.delays_ms.append(delay)
            first = first or received
            if number % 1000 == 0:
                out.trend.append((received - first, delay))


async def logs_stream_usage(url: str, job_id: str) -> tuple[int, int, int, int]:
    """(bytes in LOGS, messages in LOGS, this job's messages, the lines they hold)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        subject = subjects.log_subject(job_id)
        info = await js.stream_info(subjects.LOGS_STREAM, subjects_filter=subject)
        messages = (info.state.subjects or {}).get(subject, 0)
        sub = await js.subscribe(subject, stream=subjects.LOGS_STREAM, ordered_consumer=True)
        lines = 0
        try:
            for _ in range(messages):
                lines += len(decode_log_payload((await sub.next_msg(timeout=10)).data))
        finally:
            await sub.unsubscribe()
        return info.state.bytes, info.state.messages, messages, lines
    finally:
        await nc.close()


def _ranges(numbers: list[int]) -> list[tuple[int, int]]:
    """Sorted numbers as (first, last) runs."""
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and runs[-1][1] == n - 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def mib(size: float) -> str:
    return f"{size / 1024**2:,.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="how long the job logs")
    parser.add_argument("--rate", type=int, default=1000, help="lines per second")
    parser.add_argument(
        "--unsynced", action="store_true", help="JetStream flushed every 2 minutes (NATS's default)"
    )
    args = parser.parse_args()
    prefix = f"bench-logs-{uuid.uuid4().hex[:8]}:"
    keys = redis.Redis.from_url(REDIS_URL)
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server_kind = UnsyncedNatsServer if args.unsynced else EmbeddedNatsServer
        nats_server = server_kind(Path(tmp) / "nats")
        nats_loop = asyncio.new_event_loop()  # the server's child watcher lives on its loop
        nats_loop.run_until_complete(nats_server.start())
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "REDIS"))}
        env.update(
            REDIS_URL=REDIS_URL,
            REDIS_PREFIX=prefix,
            SWIFT_TRAINER_DATA_DIR=str(Path(tmp) / "data"),
            OUTPUT_ROOT=str(Path(tmp) / "out"),
            SWIFT_SIM_LOG_LINES_PER_SECOND=str(args.rate),
            LOG_LEVEL="WARNING",
            NATS_URL=nats_server.url,
        )
        up = Component(
            "up",
            ["up", "--simulate-gpus", "1", "--simulate-step-seconds", str(STEP_S)],
            {**env, "APP_PORT": str(port)},
            Path(tmp),
        )
        base = f"http://127.0.0.1:{port}{API}"
        client = httpx.Client(base_url=base, timeout=30)
        try:
            up.wait_until(http_ready(client), 60)
            steps = math.ceil(args.seconds / STEP_S)
            created = client.post(
                "/jobs",
                json={
                    "data_path": "AI-ModelScope/alpaca#100000",
                    "model_path": "Qwen/Qwen2.5-7B-Instruct",
                    "output_dir": "chatty",
                    "train_args": {"max_steps": steps, "save_steps": steps},
                },
            )
            created.raise_for_status()
            job_id = created.json()["job_id"]
            print(f"job {job_id}: {args.rate} lines/s for {args.seconds} s", flush=True)
            followed = Followed()
            until = time.monotonic() + args.seconds + 120
            follow(base, job_id, until, followed)  # ends when the job has finished
            status = client.get(f"/jobs/{job_id}/status").json()["status"]
            stream_bytes, stream_msgs, job_msgs, job_lines = nats_loop.run_until_complete(
                logs_stream_usage(nats_server.url, job_id)
            )
            held = int(keys.zcard(f"{prefix}feed:logs:{job_id}"))
            held_bytes = int(keys.memory_usage(f"{prefix}feed:logs:{job_id}") or 0)
        finally:
            client.close()
            up.stop()
            nats_loop.run_until_complete(nats_server.stop())
            nats_loop.close()
            for key in keys.scan_iter(match=prefix + "*", count=10_000):
                keys.delete(key)
            keys.close()
        stdout_files = list((Path(tmp) / "out").rglob("*stdout*"))
        written_lines = sum(
            1
            for path in stdout_files
            for line in path.read_text(errors="replace").splitlines()
            if CHATTER.match(line)
        )
    load = Path("/proc/loadavg").read_text().strip()
    delays = followed.delays_ms
    seen = len(followed.seen)
    lost_api = written_lines - seen
    p99 = percentile(delays, 0.99) if delays else float("nan")
    rows += [
        ("lines written by the job", f"{written_lines:,}", f"{args.rate * args.seconds:,}", ""),
        (
            "lines on the LOGS stream (+ swift's)",
            f"{job_lines:,}",
            f"{written_lines + followed.other_lines:,}",
            "",
        ),
        ("lines seen over SSE", f"{seen:,}", f"{written_lines:,}", ""),
        ("lost on the way to the API", f"{lost_api:,}", "0", "met" if lost_api == 0 else "NOT met"),
    ]
    if delays:
        rows += [
            ("written -> SSE p50", f"{statistics.median(delays):.0f} ms", "", ""),
            ("written -> SSE p99", f"{p99:.0f} ms", "< 500 ms", "met" if p99 < 500 else "NOT met"),
            ("written -> SSE max", f"{max(delays):.0f} ms", "", ""),
        ]
    cap_lines = Limits().log_lines
    config = logs_stream_config()
    assert config.max_bytes is not None and config.max_age is not None
    # Only this job logs on this server: the stream's bytes are its lines'.
    per_line = stream_bytes / job_lines if job_lines else float("nan")
    hour_lines = args.rate * 3600
    hour_bytes = per_line * hour_lines
    # The stream keeps at most ``max_msgs_per_subject`` of one job's messages (batches).
    per_job = config.max_msgs_per_subject or 0
    per_msg = stream_bytes / job_msgs if job_msgs else float("nan")
    hour_msgs = job_msgs / args.seconds * 3600
    hour_held = min(hour_msgs, per_job) * per_msg if per_job > 0 else hour_bytes
    ok_redis = held <= cap_lines
    rows += [
        (
            "Redis: the job's log buffer",
            f"{held:,} lines",
            f"<= {cap_lines:,}",
            "met" if ok_redis else "NOT met",
        ),
        ("Redis: its memory", mib(held_bytes), "", ""),
        (
            "LOGS stream: bytes held",
            mib(stream_bytes),
            f"<= {mib(config.max_bytes)}",
            "met" if stream_bytes <= config.max_bytes else "NOT met",
        ),
        ("LOGS stream: messages (batches)", f"{job_msgs:,}", f"{stream_msgs:,} in all", ""),
        ("LOGS stream: bytes per line", f"{per_line:,.0f} B", "", ""),
        (
            "an hour at this rate, written to LOGS",
            mib(hour_bytes),
            f"{hour_msgs:,.0f} messages",
            "",
        ),
        (
            "an hour at this rate, held by LOGS for the job",
            mib(hour_held),
            f"<= {per_job:,} messages, <= {mib(config.max_bytes)}",
            "per-job cap binds" if hour_msgs > per_job > 0 else "fits",
        ),
        ("an hour at this rate, Redis", f"{cap_lines:,} lines", f"<= {cap_lines:,}", "bounded"),
    ]
    missing = sorted(set(range(written_lines)) - followed.seen)
    ranges = _ranges(missing)
    print(f"job status at the end: {status}; {followed.other_lines} other lines (swift's own)")
    print(f"JetStream: {'flushed every 2 min' if args.unsynced else 'flushed every second'}")
    print(f"not seen over SSE: {len(missing):,} lines in ranges {ranges[:8]}")
    print(
        "lag over time (s since first line: delay ms): "
        + ", ".join(
            f"{t:.0f}:{d:.0f}" for t, d in followed.trend[:: max(1, len(followed.trend) // 12)]
        )
    )
    print(f"cpus={os.cpu_count()}, loadavg {load}")
    print(f"{'measure':34} {'result':>16} {'goal':>14}  status")
    for name, result, goal, verdict in rows:
        print(f"{name:34} {result:>16} {goal:>14}  {verdict}")


if __name__ == "__main__":
    main()
