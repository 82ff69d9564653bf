"""Two (or more) builds of ``swift-trainer up`` loaded at the same time: CPU per request.

    uv run python tests/perf/bench_ab.py SRC_A SRC_B [--mode create|status] [--seconds 10]
                                         [--rounds 3] [--connections 16]

Each ``SRC`` is the ``src`` folder of a checkout (say a ``git worktree`` of main next to
this one); each build runs as its own ``up`` (its own embedded NATS, SQLite and Redis
prefix) under this interpreter with ``PYTHONPATH=SRC``, so both need the same dependencies.
Every round loads all builds at once, one ``wrk`` each, and prints the CPU each ``up`` and
its nats-server spent per request over that same window. On a shared, loaded machine the
builds then meet the same load, which alternating runs cannot promise: the CPU per
request of one build drifts by a quarter between runs minutes apart, far more than most
changes it is meant to show. A first, short round warms every build up and is not
counted.
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
import uuid
from pathlib import Path

import httpx
import redis

from swift_trainer.bus.embedded import free_port

CREATE = """
counter = 0
request = function()
  counter = counter + 1
  local id = string.format("TAG-%d-%d", math.random(1, 2000000000), counter)
  local body = '{"job_id":"' .. id .. '","data_path":"d","model_path":"m","auto_start":false}'
  return wrk.format("POST", nil, {["Content-Type"]="application/json"}, body)
end
"""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _nats_server_pid(parent: int) -> int:
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"nats-server" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    raise SystemExit(f"no nats-server under {parent}")


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"up exited early ({process.returncode}) for {url}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer in {timeout}s")


def _rate(output: str) -> float:
    if "Non-2xx" in output:
        raise SystemExit(f"wrk saw errors:\n{output}")
    return float(next(line.split()[1] for line in output.splitlines() if "Requests/sec" in line))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sources", nargs="+", type=Path, help="src folders of the builds")
    parser.add_argument("--mode", choices=("create", "status"), default="create")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    options = parser.parse_args()
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    names = [f"{i}:{source.resolve().parent.name}" for i, source in enumerate(options.sources)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "EVENT_STORE"))}
    prefixes = [f"bench-ab-{uuid.uuid4().hex[:8]}:" for _ in names]
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            urls = []
            for i, source in enumerate(options.sources):
                port = free_port()
                build_env = {
                    **env,
                    "PYTHONPATH": str(source.resolve()),
                    "SWIFT_TRAINER_DATA_DIR": f"{tmp}/{i}",
                    "REDIS_URL": redis_url,
                    "REDIS_PREFIX": prefixes[i],
                    "APP_HOST": "127.0.0.1",
                    "APP_PORT": str(port),
                    "LOG_LEVEL": "WARNING",
                }
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "swift_trainer.cli", "up"],
                        env=build_env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
                urls.append(f"http://127.0.0.1:{port}/api/v1/training")
            for url, process in zip(urls, processes, strict=True):
                _wait_ready(url, process)
                created = httpx.post(
                    f"{url}/jobs",
                    json={"job_id": "st", "data_path": "d", "model_path": "m", "auto_start": False},
                    timeout=30,
                )
                assert created.status_code == 201, created.text
            servers = [_nats_server_pid(process.pid) for process in processes]
            figures: list[list[tuple[float, float, float]]] = [[] for _ in names]
            for round_ in range(options.rounds + 1):
                seconds = 3 if round_ == 0 else options.seconds
                commands = []
                for i, url in enumerate(urls):
                    command = [
                        "wrk",
                        "-t1",
                        f"-c{options.connections}",
                        f"-d{seconds}s",
                        f"{url}/jobs/st/status",
                    ]
                    if options.mode == "create":
                        script = Path(tmp) / f"create-{i}-{round_}.lua"
                        script.write_text(CREATE.replace("TAG", f"r{round_}"))
                        command[-1:] = [f"{url}/jobs", "-s", str(script)]
                    commands.append(command)
                before = [
                    (_cpu_seconds(p.pid), _cpu_seconds(s))
                    for p, s in zip(processes, servers, strict=True)
                ]
                loads = [
                    subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
                    for command in commands
                ]
                outputs = [load.communicate()[0] for load in loads]
                after = [
                    (_cpu_seconds(p.pid), _cpu_seconds(s))
                    for p, s in zip(processes, servers, strict=True)
                ]
                if round_ == 0:
                    continue
                load_average = os.getloadavg()[0]
                for i, name in enumerate(names):
                    requests = _rate(outputs[i]) * seconds
                    ours = (after[i][0] - before[i][0]) / requests * 1e6
                    nats = (after[i][1] - before[i][1]) / requests * 1e6
                    figures[i].append((ours, nats, requests / seconds))
                    print(
                        f"round {round_} {name:>20}: {requests / seconds:6.0f} req/s, up "
                        f"{ours:6.0f} us/req, nats-server {nats:5.0f} us/req "
                        f"(load average {load_average:.1f})",
                        flush=True,
                    )
        finally:
            for process in processes:
                process.send_signal(signal.SIGINT)
            for process in processes:
                try:
                    process.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            client = redis.Redis.from_url(redis_url)
            for prefix in prefixes:
                for key in client.scan_iter(match=prefix + "*"):
                    client.delete(key)
    print(f"{options.mode}: medians of {options.rounds} rounds of {options.seconds} s, all at once")
    for name, rows in zip(names, figures, strict=True):
        ours = statistics.median(row[0] for row in rows)
        nats = statistics.median(row[1] for row in rows)
        rate = statistics.median(row[2] for row in rows)
        print(f"{name:>22}: up {ours:.0f} us/req, nats-server {nats:.0f} us/req, {rate:.0f} req/s")


if __name__ == "__main__":
    main()
