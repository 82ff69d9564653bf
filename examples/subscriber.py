"""Print every job completion and failure with its final loss, from NATS, exactly once.

An integrator's durable JetStream consumer on swift-trainer's EVENTS stream (see
``docs/contract/asyncapi.json``). It needs nothing but nats-py:

    python examples/subscriber.py --nats-url nats://127.0.0.1:4222 --durable reports \\
        --state reports.state [--json]

How it neither misses nor repeats a completion across restarts and crashes:

- The consumer is *durable* (``--durable``) with explicit acks: JetStream remembers what was
  acknowledged, so after a restart delivery resumes with the first unacknowledged event;
  nothing published while the subscriber was down is missed.
- ``max_ack_pending=1`` keeps delivery in stream order, one event in flight.
- A crash after printing but before the ack makes JetStream deliver that event again; the
  ``--state`` file records the stream sequence of the last event printed (written, fsynced,
  then acknowledged), and anything at or below it is acknowledged without printing.

The final loss is not in ``JobSucceeded``/``JobFailed``: it is the loss of the job's last
``JobProgressed`` event, read with a direct get of that subject's last message (the EVENTS
stream allows direct gets), so the subscriber keeps no per-job memory of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

STREAM = "EVENTS"
ROOT = "st.events"
WATCHED = ("JobSucceeded", "JobFailed")


def read_state(path: Path) -> int:
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["last_seq"])
    except FileNotFoundError:
        return 0
    except (ValueError, KeyError, TypeError) as exc:
        message = f"error: state file {path} is unreadable ({exc}); fix or remove it"
        raise SystemExit(message) from exc


def write_state(path: Path, seq: int) -> None:
    """Atomic and durable: a crash leaves the old or the new state, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump({"last_seq": seq}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


async def final_loss(js: Any, job_id: str, attempt: int, before: int) -> float | None:
    """The loss of the job's last progress report of this attempt, if there was one."""
    subject = f"{ROOT}.job._.{job_id}.JobProgressed"
    try:
        message = await js.get_last_msg(STREAM, subject, direct=True)
    except NotFoundError:
        return None
    envelope = json.loads(message.data)
    event = envelope["event"]
    if event.get("attempt") != attempt or envelope["position"] > before:
        return None  # a later attempt has reported since: this one's loss is not known
    loss = event.get("loss")
    return float(loss) if loss is not None else None


def describe(envelope: dict[str, Any], loss: float | None, as_json: bool) -> str:
    event = envelope["event"]
    record = {
        "event": envelope["type"],
        "job_id": event["job_id"],
        "attempt": event.get("attempt"),
        "final_loss": loss,
        "position": envelope["position"],
        "at": envelope["recorded_at"],
    }
    if envelope["type"] == "JobSucceeded":
        record["final_step"] = event.get("final_step")
    else:
        record["reason"] = event.get("reason")
        record["exit_code"] = event.get("exit_code")
    if as_json:
        return json.dumps(record)
    outcome = "succeeded" if envelope["type"] == "JobSucceeded" else "FAILED"
    shown = "unknown" if loss is None else f"{loss:.4f}"
    extra = (
        f" step={record['final_step']}"
        if outcome == "succeeded"
        else f" reason={record['reason']!r}"
    )
    return f"{record['at']} {outcome:<9} job={record['job_id']} final_loss={shown}{extra}"


async def run(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nc = await nats.connect(args.nats_url, name=f"subscriber-{args.durable}")
    try:
        js = nc.jetstream()
        await js.add_consumer(
            STREAM,
            ConsumerConfig(
                durable_name=args.durable,
                filter_subjects=[f"{ROOT}.job.*.*.{name}" for name in WATCHED],
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                max_ack_pending=1,
                ack_wait=30,
            ),
        )
        subscription = await js.pull_subscribe_bind(durable=args.durable, stream=STREAM)
        printed_up_to = read_state(args.state)
        while not stop.is_set():
            try:
                batch = await subscription.fetch(1, timeout=1)
            except NatsTimeout:
                continue
            for message in batch:
                seq = message.metadata.sequence.stream
                if seq > printed_up_to:
                    try:
                        envelope = json.loads(message.data)
                        event = envelope["event"]
                        loss = await final_loss(
                            js, event["job_id"], event.get("attempt", 0), envelope["position"]
                        )
                        line = describe(envelope, loss, args.json)
                    except (ValueError, KeyError, TypeError) as exc:
                        line = f"skipped unreadable message at stream sequence {seq}: {exc}"
                    sys.stdout.write(line + "\n")
                    sys.stdout.flush()
                    write_state(args.state, seq)
                    printed_up_to = seq
                await message.ack_sync()
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--durable", default="job-outcomes", help="the consumer's durable name")
    parser.add_argument(
        "--state", type=Path, default=Path("subscriber.state"), help="last printed sequence"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
