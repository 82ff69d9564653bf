"""GPU-hours reports at the size of ``bench_scale.py``'s store: 100k jobs over a month.

    uv run python tests/perf/bench_usage.py [--jobs 100000] [--days 30] [--store URL]

Each job has the history ``bench_scale.py`` writes (submitted, queued, scheduled, started,
four progress reports, a checkpoint, then succeeded, or failed for one in ten), spread over
``--days`` days, among 20 owners and 5 teams. The events are folded into the usage ledger
(what the API keeps caught up), then a report over the whole month is timed for each
grouping (goal: under 1 s). The baseline is the fold itself: what each report would cost
if it replayed the log. ``--store URL`` also folds an existing store (e.g. one that
``bench_scale.py --database NAME --keep`` filled) through ``UsageView``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from swift_trainer.core import events as e
from swift_trainer.core.spec import decode_spec
from swift_trainer.core.usage import UsageLedger, usage_report

START = datetime(2026, 11, 1, tzinfo=UTC)


def job_history(index: int, days: int) -> Iterator[e.Event]:
    job_id = f"scale-{index:07d}"
    spec = decode_spec(
        {
            "data_path": "AI-ModelScope/coco#20000",
            "model_path": "Qwen/Qwen2.5-7B",
            "output_dir": "out",
            "owner": f"owner-{index % 20:02d}",
            "labels": {"team": f"team-{index % 5}"},
        }
    )
    t = START + timedelta(seconds=(index * 7919) % (days * 86400))
    yield e.JobSubmitted(at=t, job_id=job_id, spec=spec)
    yield e.JobQueued(at=t, job_id=job_id, priority=5)
    t += timedelta(seconds=30 + index % 600)
    gpus = tuple(range(1 + index % 8))
    yield e.JobScheduled(at=t, job_id=job_id, attempt=1, runner_id="r", gpu_ids=gpus)
    t += timedelta(seconds=5)
    yield e.JobStarted(at=t, job_id=job_id, attempt=1, runner_id="r", pid=1, command=("x",))
    for step in (100, 200, 300, 400):
        t += timedelta(minutes=10)
        yield e.JobProgressed(at=t, job_id=job_id, attempt=1, step=step, max_steps=500)
    yield e.CheckpointSaved(at=t, job_id=job_id, attempt=1, step=400, path="out/ckpt-400")
    t += timedelta(minutes=10)
    if index % 10 == 0:
        yield e.JobFailed(at=t, job_id=job_id, attempt=1, exit_code=1, reason="oom")
    else:
        yield e.JobSucceeded(at=t, job_id=job_id, attempt=1, final_step=500)


async def fold_store(url: str) -> None:
    from swift_trainer.core.sqlstore import open_event_store
    from swift_trainer.projections.usage_view import UsageView

    store = open_event_store(url)
    await store.setup()
    try:
        view = UsageView(store)
        started = time.perf_counter()
        ledger = await view.ledger()
        print(f"store fold: {view.position:,} events in {time.perf_counter() - started:.2f} s")
        started = time.perf_counter()
        await view.ledger()
        print(f"store catch-up with nothing new: {1000 * (time.perf_counter() - started):.1f} ms")
        started = time.perf_counter()
        rows = usage_report(
            ledger, group_by="owner", start=START - timedelta(days=3650), end=datetime.now(UTC)
        )
        print(f"store report: {len(rows)} rows in {time.perf_counter() - started:.3f} s")
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--store", help="also fold this event store (SQLAlchemy URL)")
    args = parser.parse_args()

    events = [event for i in range(args.jobs) for event in job_history(i, args.days)]
    events.sort(key=lambda event: event.at)
    ledger = UsageLedger()
    started = time.perf_counter()
    for event in events:
        ledger.apply(event)
    fold_s = time.perf_counter() - started
    print(f"fold: {len(events):,} events of {args.jobs:,} jobs in {fold_s:.2f} s (baseline)")
    end = START + timedelta(days=args.days)
    for group_by in ("owner", "day", "label:team"):
        started = time.perf_counter()
        rows = usage_report(ledger, group_by=group_by, start=START, end=end)
        took = time.perf_counter() - started
        verdict = "ok" if took < 1.0 else "OVER the 1 s goal"
        print(
            f"month report by {group_by:<10}: {len(rows):>3} rows in {took:.3f} s "
            f"({verdict}; {fold_s / took:.1f}x faster than replaying the log)"
        )
    started = time.perf_counter()
    rows = usage_report(ledger, group_by="day", start=START, end=end, owner="owner-03")
    print(f"one owner's month by day: {len(rows)} rows in {time.perf_counter() - started:.3f} s")
    if args.store:
        asyncio.run(fold_store(args.store))


if __name__ == "__main__":
    main()
