"""Load on the running service over loopback, next to a minimal Litestar + Redis baseline.

    uv run python tests/perf/bench_api.py [--seconds 10] [--connections 16]
                                          [--shape up|distributed]

Starts ``swift-trainer up`` (Redis read models at 127.0.0.1:6379 under a throwaway prefix,
embedded NATS, SQLite), or with ``--shape distributed`` a nats-server, a ``handler`` and an
``api`` process (SQLite, Redis), and, as the baseline, a minimal Litestar app whose one
route reads one Redis key, each as its own process under uvicorn. The same client (``wrk``
when installed, else httpx) loads both and prints requests per second and p50/p99 latency
for ``GET /training/jobs/{id}/status`` and for ``POST /training/jobs``, the ratio of our
status-read latency to the baseline's, and the CPU each of our processes spent per create.
After the load, creates answered and read back at once check read-your-writes (each GET
must find its job). Goals: status reads within 1.2x of the baseline's latency, and 1,000
creates per second. The CPU each server spent per status read is printed too: on a busy
machine it varies less than latency does. The client shares the machine's cores with the servers,
so absolute figures understate a real deployment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import redis

from swift_trainer.bus.embedded import EmbeddedNatsServer, free_port

CREATE_GOAL_PER_S = 1000
READ_BACKS = 200
READ_RATIO_GOAL = 1.2
BASE_ROW = "baseline GET (1 Redis GET)"
STATUS_ROW = "GET /jobs/{id}/status"

BASELINE_APP = textwrap.dedent(
    """
    import os
    import redis.asyncio as aioredis
    from litestar import Litestar, Response, get

    client = aioredis.Redis.from_url(os.environ["REDIS_URL"])
    KEY = os.environ["BASELINE_KEY"]

    @get("/status/{job_id:str}")
    async def status(job_id: str) -> Response[bytes]:
        data = await client.get(KEY + job_id)
        return Response(data or b"{}", media_type="application/json")

    app = Litestar([status])
    """,
)


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited early ({process.returncode}) for {url}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer in {timeout}s")


async def _load(
    call: Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]],
    base_url: str,
    seconds: float,
    connections: int,
) -> tuple[float, float, float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        deadline = time.perf_counter() + seconds
        counter = iter(range(10**9))

        async def worker() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = await call(client, next(counter))
                latencies.append((time.perf_counter() - start) * 1000)
                if response.status_code >= 400:
                    raise SystemExit(f"{response.status_code}: {response.text[:300]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return len(latencies) / elapsed, statistics.median(ordered), ordered[int(0.99 * len(ordered))]


WRK_CREATE = """
counter = 0
request = function()
  counter = counter + 1
  local id = string.format("wrk-%d-%d", math.random(1, 2000000000), counter)
  local body = '{"job_id":"' .. id .. '","data_path":"d","model_path":"m","auto_start":false}'
  return wrk.format("POST", nil, {["Content-Type"]="application/json"}, body)
end
"""


def _wrk(
    url: str, seconds: float, connections: int, script: Path | None
) -> tuple[float, float, float]:
    """Load with wrk (C, one thread): the client then costs far less CPU than the servers."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", url]
    if script is not None:
        command[1:1] = ["-s", str(script)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in output:
        raise SystemExit(f"wrk saw errors:\n{output}")

    def latency(label: str) -> float:
        value = next(
            line.split()[1] for line in output.splitlines() if line.strip().startswith(label)
        )
        scale = {"us": 0.001, "ms": 1.0}.get(value[-2:], 1000.0)  # wrk prints us, ms or s
        return float(value.rstrip("mus")) * scale

    rate = float(
        next(line.split()[1] for line in output.splitlines() if line.startswith("Requests/sec"))
    )
    return rate, latency("50%"), latency("99%")


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Row = tuple[float, float, float]


def _cpu_per_request(pid: int, seconds: float, load: Callable[[], Row]) -> tuple[Row, float]:
    """A load's figures and the CPU seconds ``pid`` spent per request under it."""
    before = _cpu_seconds(pid)
    row = load()
    return row, (_cpu_seconds(pid) - before) / (row[0] * seconds)


def _nats_server_pid(parent: int) -> int | None:
    """The nats-server among ``parent``'s children (``up`` starts its own)."""
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"nats-server" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    return None


async def _read_backs(base_url: str, spec: dict[str, object]) -> int:
    """Creates each followed at once by a GET of the job: how many GETs missed it."""
    missed = 0
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for i in range(READ_BACKS):
            job_id = f"read-back-{uuid.uuid4().hex[:8]}-{i}"
            created = await client.post("/jobs", json={**spec, "job_id": job_id})
            if created.status_code != 201:
                raise SystemExit(f"create {job_id}: {created.status_code} {created.text[:300]}")
            if (await client.get(f"/jobs/{job_id}")).status_code != 200:
                missed += 1
    return missed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--httpx", action="store_true", help="load with httpx even if wrk exists")
    parser.add_argument("--shape", choices=("up", "distributed"), default="up")
    options = parser.parse_args()
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "EVENT_STORE"))}

    with tempfile.TemporaryDirectory() as tmp:
        ours_port, base_port = free_port(), free_port()
        common = {
            **env,
            "SWIFT_TRAINER_DATA_DIR": str(Path(tmp) / "data"),
            "REDIS_URL": redis_url,
            "REDIS_PREFIX": prefix,
            "APP_HOST": "127.0.0.1",
            "APP_PORT": str(ours_port),
            "LOG_LEVEL": "WARNING",
        }
        nats: EmbeddedNatsServer | None = None
        nats_loop = asyncio.new_event_loop()  # the server's start and stop share one loop
        ours: dict[str, subprocess.Popen[bytes]] = {}
        if options.shape == "up":
            ours["up"] = _start([sys.executable, "-m", "swift_trainer.cli", "up"], common)
        else:
            nats = EmbeddedNatsServer(Path(tmp) / "nats")
            nats_loop.run_until_complete(nats.start())
            distributed = {
                **common,
                "NATS_URL": nats.url,
                "EVENT_STORE_URL": f"sqlite+aiosqlite:///{Path(tmp) / 'events.db'}",
            }
            for kind in ("handler", "api"):
                ours[kind] = _start([sys.executable, "-m", "swift_trainer.cli", kind], distributed)
        watched = {kind: process.pid for kind, process in ours.items()}
        app_file = Path(tmp) / "baseline_app.py"
        app_file.write_text(BASELINE_APP)
        baseline = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "baseline_app:app",
                "--port",
                str(base_port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=tmp,
            env={**env, "REDIS_URL": redis_url, "BASELINE_KEY": prefix + "baseline:"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            ours_url = f"http://127.0.0.1:{ours_port}/api/v1/training"
            base_url = f"http://127.0.0.1:{base_port}"
            _wait_http(f"{ours_url}/health", ours["up" if "up" in ours else "api"])
            nats_pid = _nats_server_pid(ours["up"].pid if "up" in ours else os.getpid())
            if nats_pid is not None:
                watched["nats-server"] = nats_pid
            _wait_http(f"{base_url}/status/x", baseline)

            spec = {"data_path": "d#100", "model_path": "m", "auto_start": False}
            created = httpx.post(
                f"{ours_url}/jobs", json={**spec, "job_id": "bench-status"}, timeout=30
            )
            assert created.status_code == 201, created.text
            body = httpx.get(f"{ours_url}/jobs/bench-status/status", timeout=30).content
            redis.Redis.from_url(redis_url).set(prefix + "baseline:bench-status", body)

            async def our_status(client: httpx.AsyncClient, _i: int) -> httpx.Response:
                return await client.get("/jobs/bench-status/status")

            async def base_status(client: httpx.AsyncClient, _i: int) -> httpx.Response:
                return await client.get("/status/bench-status")

            async def our_create(client: httpx.AsyncClient, i: int) -> httpx.Response:
                return await client.post("/jobs", json={**spec, "job_id": f"bench-{i}"})

            seconds, connections = options.seconds, options.connections
            serving = ours["up" if "up" in ours else "api"].pid
            if shutil.which("wrk") and not options.httpx:
                script = Path(tmp) / "create.lua"
                script.write_text(WRK_CREATE)
                client_name = "wrk (1 thread)"
                reads = {
                    BASE_ROW: _cpu_per_request(
                        baseline.pid,
                        seconds,
                        lambda: _wrk(f"{base_url}/status/bench-status", seconds, connections, None),
                    ),
                    STATUS_ROW: _cpu_per_request(
                        serving,
                        seconds,
                        lambda: _wrk(
                            f"{ours_url}/jobs/bench-status/status", seconds, connections, None
                        ),
                    ),
                }
                cpu_before = {kind: _cpu_seconds(pid) for kind, pid in watched.items()}
                rows = {"POST /jobs (held)": _wrk(f"{ours_url}/jobs", seconds, connections, script)}
            else:
                client_name = "one httpx client process"
                reads = {
                    BASE_ROW: _cpu_per_request(
                        baseline.pid,
                        seconds,
                        lambda: asyncio.run(_load(base_status, base_url, seconds, connections)),
                    ),
                    STATUS_ROW: _cpu_per_request(
                        serving,
                        seconds,
                        lambda: asyncio.run(_load(our_status, ours_url, seconds, connections)),
                    ),
                }
                cpu_before = {kind: _cpu_seconds(pid) for kind, pid in watched.items()}
                rows = {
                    "POST /jobs (held)": asyncio.run(
                        _load(our_create, ours_url, seconds, connections),
                    )
                }
            cpu_used = {kind: _cpu_seconds(pid) - cpu_before[kind] for kind, pid in watched.items()}
            rows = {name: row for name, (row, _cpu) in reads.items()} | rows
            created = rows["POST /jobs (held)"][0] * seconds
            missed = asyncio.run(_read_backs(ours_url, spec))
        finally:
            for process in (*ours.values(), baseline):
                process.send_signal(signal.SIGINT)
            for process in (*ours.values(), baseline):
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
            if nats is not None:
                nats_loop.run_until_complete(nats.stop())
            nats_loop.close()
            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(match=prefix + "*"):
                client.delete(key)

    shape = "up (one process)" if options.shape == "up" else "api + handler processes"
    print(f"{shape}; {connections} connections, {seconds:.0f} s per line, load from {client_name}")
    print(f"cpus={os.cpu_count()} load average {os.getloadavg()[0]:.2f} at the end")
    print(f"{'endpoint':30} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9}")
    for name, (rate, p50, p99) in rows.items():
        print(f"{name:30} {rate:9.0f} {p50:9.2f} {p99:9.2f}")
    base = rows[BASE_ROW]
    status = rows[STATUS_ROW]
    create = rows["POST /jobs (held)"]
    ratio = status[1] / base[1]
    verdict = "met" if ratio <= READ_RATIO_GOAL else "NOT met"
    print(
        f"status p50 latency ratio ours/baseline: {ratio:.2f} "
        f"(goal <= {READ_RATIO_GOAL}: {verdict})"
    )
    ours_cpu, base_cpu = reads[STATUS_ROW][1], reads[BASE_ROW][1]
    print(
        f"CPU per status read (of a core): ours {ours_cpu * 1e6:.0f} us, baseline "
        f"{base_cpu * 1e6:.0f} us, ratio {ours_cpu / base_cpu:.2f} (steadier than latency "
        "on a busy machine)"
    )
    cpu = ", ".join(f"{kind} {used / created * 1e6:.0f} us" for kind, used in cpu_used.items())
    print(f"CPU per create (of a core): {cpu}")
    print(
        f"read-your-writes: {READ_BACKS - missed} of {READ_BACKS} creates found by a GET "
        f"sent right after the answer ({'met' if missed == 0 else 'NOT met'})"
    )
    verdict = "met" if create[0] >= CREATE_GOAL_PER_S else "NOT met"
    print(f"creates per second: {create[0]:.0f} (goal >= {CREATE_GOAL_PER_S}: {verdict})")


if __name__ == "__main__":
    main()
