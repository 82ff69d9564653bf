"""Commands through NATS to the handler with the SQLite store, next to a bare NATS echo.

    uv run python tests/perf/bench_commands.py [--commands 2000] [--concurrency 32]

Prints, for our path (CommandClient → NATS → CommandHandler → decide → SQLite append →
reply) and for a baseline on the same embedded nats-server (a subscriber that answers each
request at once): sequential latency p50/p99 and concurrent throughput, and the ratios. The
ratio says what the command path costs over the transport. Goal (issue 3): p50 under 3 ms
and over 1,000 commands/s on a 2-core machine with SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg

from swift_trainer.bus.command_client import CommandClient
from swift_trainer.bus.command_handler import CommandHandler
from swift_trainer.bus.connection import connect, provision
from swift_trainer.bus.embedded import EmbeddedNatsServer
from swift_trainer.bus.relay import RelayNudge
from swift_trainer.core import commands as c
from swift_trainer.core.spec import JobSpec
from swift_trainer.core.sqlstore import open_event_store

SPEC = JobSpec(
    data_path="AI-ModelScope/coco#20000", model_path="Qwen/Qwen2.5-VL-7B-Instruct", output_dir="o/x"
)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _sequential(call: Callable[[int], Awaitable[object]], n: int) -> list[float]:
    latencies = []
    for i in range(n):
        start = time.perf_counter()
        await call(i)
        latencies.append((time.perf_counter() - start) * 1000)
    return latencies


async def _concurrent(call: Callable[[int], Awaitable[object]], n: int, concurrency: int) -> float:
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            await call(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - start)


async def main(n: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNatsServer(Path(tmp) / "nats")
        await server.start()
        store = open_event_store(f"sqlite+aiosqlite:///{Path(tmp) / 'events.db'}")
        await store.setup()
        nc: Client = await connect(server.url, name="bench")
        await provision(nc.jetstream())
        handler_nc = await connect(server.url, name="bench-handler")
        handler = CommandHandler(store, after_append=[RelayNudge(handler_nc)])
        await handler.start(handler_nc)

        async def echo(msg: Msg) -> None:
            await msg.respond(msg.data)

        await handler_nc.subscribe("bench.echo", cb=echo)
        await handler_nc.flush()
        client = CommandClient(nc, timeout=30)
        payload = b"x" * 400  # about the size of an encoded SubmitJob envelope

        async def echo_call(_i: int) -> object:
            return await nc.request("bench.echo", payload, timeout=30)

        counter = iter(range(10**9))

        async def submit_call(_i: int) -> object:
            reply = await client.send(c.SubmitJob(job_id=f"j{next(counter)}", spec=SPEC))
            assert reply.ok, reply
            return reply

        await _sequential(echo_call, 200)  # warm up both paths
        await _sequential(submit_call, 200)

        results = {}
        for name, call in (("nats echo (baseline)", echo_call), ("submit command", submit_call)):
            latencies = await _sequential(call, n)
            rate = await _concurrent(call, n, concurrency)
            results[name] = (
                statistics.median(latencies),
                _percentile(latencies, 0.99),
                rate,
            )

        await handler.stop()
        await handler_nc.close()
        await nc.close()
        await store.close()
        await server.stop()

    print(f"commands: {n} sequential + {n} at concurrency {concurrency}; SQLite, embedded NATS")
    print(f"{'path':24} {'p50 ms':>9} {'p99 ms':>9} {'per s':>10}")
    for name, (p50, p99, rate) in results.items():
        print(f"{name:24} {p50:9.3f} {p99:9.3f} {rate:10.0f}")
    base = results["nats echo (baseline)"]
    ours = results["submit command"]
    print(
        f"ratio ours/baseline: p50 x{ours[0] / base[0]:.2f}, p99 x{ours[1] / base[1]:.2f}, "
        f"throughput x{ours[2] / base[2]:.2f}",
    )
    print(
        f"goal p50 < 3 ms: {'met' if ours[0] < 3 else 'NOT met'}; "
        f"goal > 1000 commands/s: {'met' if ours[2] > 1000 else 'NOT met'}",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    options = parser.parse_args()
    asyncio.run(main(options.commands, options.concurrency))
