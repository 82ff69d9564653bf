"""How the terminal client shows answers to people: tables, colours, bars, progress.

Scripts use ``--output json`` instead, which prints the API's JSON unchanged; everything
here is for eyes only and may change between releases.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

STATUS_STYLES: Final = {
    "held": "bright_black",
    "queued": "yellow",
    "scheduled": "cyan",
    "running": "bold blue",
    "stopping": "magenta",
    "succeeded": "green",
    "failed": "bold red",
    "stopped": "bright_black",
    "deleted": "strike bright_black",
}


def status_text(status: str | None) -> Text:
    value = status or "-"
    return Text(value, style=STATUS_STYLES.get(value, ""))


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _table(title: str) -> Table:
    """A plain table that fits 80 columns: a rule under the headers, no side borders."""
    return Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0)
    )


def _status_column(table: Table) -> None:
    # A status word is never cut: the column is as wide as the longest one.
    width = max(len(name) for name in STATUS_STYLES)
    table.add_column("STATUS", no_wrap=True, min_width=width)


def _gpus(job: Mapping[str, Any]) -> str:
    """``8``, or ``4x8`` for a job on 4 hosts with 8 GPUs each."""
    nodes = job.get("nodes") or 1
    count = str(job.get("gpu_count", "-"))
    return f"{nodes}x{count}" if nodes > 1 else count


def jobs_table(items: Iterable[Mapping[str, Any]]) -> Table:
    jobs = list(items)
    table = _table("jobs")
    # Ids are what people copy into the next command: never wrapped or cut.
    longest = max((len(job["job_id"]) for job in jobs), default=3)
    table.add_column("JOB", no_wrap=True, min_width=longest)
    _status_column(table)
    for name in ("PRI", "GPUS", "STEP", "LOSS"):
        table.add_column(name, no_wrap=True, justify="right")
    table.add_column("SUBMITTED", no_wrap=True, overflow="ellipsis")
    for job in jobs:
        progress = job.get("progress") or {}
        table.add_row(
            job["job_id"],
            status_text(job.get("status")),
            str(job.get("priority", "-")),
            _gpus(job),
            _steps(progress),
            _number(progress.get("loss")),
            (job.get("submitted_at") or "-")[5:16].replace("T", " "),
        )
    return table


def _steps(progress: Mapping[str, Any]) -> str:
    step, total = progress.get("step"), progress.get("max_steps")
    if step is None:
        return "-"
    return f"{step}/{total}" if total else str(step)


#: Fields of a job that say how it is stored, not what it is: ``jobs show`` leaves them out.
INTERNAL_FIELDS: Final = frozenset(
    {"version", "submitted_position", "updated_position", "last_checkpoint", "pid"}
)


def job_details(job: Mapping[str, Any]) -> Table:
    """``jobs show``: one field a line; lists (checkpoints, exports) one item a line."""
    table = Table(title=str(job.get("job_id", "")), title_justify="left", box=None)
    table.show_header = False
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in job.items():
        if key in INTERNAL_FIELDS or key == "job_id" or value in (None, [], {}, ()):
            continue
        if key == "status":
            table.add_row(key, status_text(value))
        elif key == "progress":
            table.add_row(key, _progress_line(value))
        elif key == "checkpoints":
            table.add_row(key, "\n".join(_checkpoint_line(c) for c in value))
        elif key == "exports":
            table.add_row(key, "\n".join(_export_line(x) for x in value))
        elif key == "tracker_urls":
            # One row a tracker; the link style keeps a folded URL clickable in a terminal.
            for tracker, link in value.items():
                table.add_row(f"{tracker} run", Text(link, style=f"link {link}"))
        elif isinstance(value, dict):
            table.add_row(key, "\n".join(f"{k}={_plain(v)}" for k, v in value.items()))
        else:
            table.add_row(key, _plain(value))
    return table


def _progress_line(progress: Mapping[str, Any]) -> str:
    parts = [f"step {_steps(progress)}"]
    if progress.get("percent") is not None:
        parts[0] += f" ({progress['percent']:.0f}%)"
    parts.extend(
        f"{name} {_number(progress[name])}"
        for name in ("loss", "learning_rate", "eval_loss")
        if progress.get(name) is not None
    )
    return ", ".join(parts)


def _checkpoint_line(checkpoint: Mapping[str, Any]) -> str:
    step, attempt = checkpoint.get("step"), checkpoint.get("attempt")
    return f"step {step} (attempt {attempt}): {checkpoint.get('path')}"


def _export_line(export: Mapping[str, Any]) -> str:
    where = export.get("artifact_path") or export.get("reason") or export.get("checkpoint")
    return f"{export.get('export_id')} {export.get('status')}: {where}"


def key_values(title: str, data: Mapping[str, Any]) -> Table:
    table = Table(title=title, title_justify="left", box=None, show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in data.items():
        if value in (None, [], {}, ()):
            continue
        shown: Text | str = status_text(value) if key == "status" else _plain(value)
        table.add_row(key, shown)
    return table


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value)
    return _number(value)


def events_table(job_id: str, events: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(title=f"events of {job_id}", title_justify="left")
    for name in ("POS", "TIME", "EVENT", "ACTOR", "DETAILS"):
        table.add_column(name, no_wrap=name != "DETAILS", overflow="fold")
    for event in events:
        table.add_row(*event_row(event))
    return table


def event_row(event: Mapping[str, Any]) -> tuple[str, str, str, str, str]:
    details = _plain(event.get("data") or {})
    return (
        str(event.get("position", "")),
        str(event.get("at", ""))[:19],
        str(event.get("type", "")),
        str(event.get("actor") or "-"),
        details,
    )


def queue_table(queue: Mapping[str, Any]) -> Table:
    processor = queue.get("processor") or {}
    state = processor.get("state", "?")
    title = (
        f"queue: {queue.get('length', 0)} queued, {queue.get('held', 0)} held; "
        f"processor {state}" + (f" ({processor.get('reason')})" if processor.get("reason") else "")
    )
    table = _table(title)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("JOB", no_wrap=True)
    table.add_column("PRI", justify="right", no_wrap=True)
    table.add_column("GPUS", justify="right", no_wrap=True)
    table.add_column("WAIT", no_wrap=True)
    table.add_column("NOTE", overflow="fold")
    for entry in queue.get("entries", []):
        table.add_row(
            str(entry["position"]),
            entry["job_id"] or "(another owner's)",
            str(entry["priority"]),
            _gpus({"gpu_count": 1, **entry}),
            entry.get("estimated_wait_time") or "-",
            _queue_note(entry),
        )
    return table


def _queue_note(entry: Mapping[str, Any]) -> Text | str:
    if entry.get("unplaceable"):
        return Text(entry["unplaceable"], style="red")
    if entry.get("blocked_by"):
        return Text(entry.get("blocked_reason") or entry["blocked_by"], style="yellow")
    return ""


def bar(fraction: float | None, width: int = 20) -> Text:
    """A fixed-width bar: green under 60 %, yellow under 90 %, red above."""
    if fraction is None:
        return Text("?".ljust(width), style="bright_black")
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * width)
    style = "green" if fraction < 0.6 else "yellow" if fraction < 0.9 else "red"
    text = Text("█" * filled, style=style)
    text.append("░" * (width - filled), style="bright_black")
    return text


def gpus_table(gpus: Mapping[str, Any]) -> Table:
    title = (
        f"GPUs: {gpus.get('total', 0)} on live runners, {gpus.get('free', 0)} free, "
        f"{gpus.get('assigned', 0)} assigned"
    )
    table = _table(title)
    table.add_column("RUNNER", no_wrap=True)
    table.add_column("GPU", no_wrap=True, justify="right")
    table.add_column("NAME", no_wrap=True, overflow="ellipsis", max_width=16)
    table.add_column("MEMORY (GiB)", no_wrap=True)
    table.add_column("UTIL", no_wrap=True, justify="right")
    table.add_column("JOB", no_wrap=True)
    for runner in gpus.get("runners", []):
        alive = runner.get("alive", False)
        runner_id = Text(runner["runner_id"], style="" if alive else "bright_black strike")
        for gpu in runner.get("gpus", []):
            total, used = gpu.get("memory_total_mib") or 0, gpu.get("memory_used_mib") or 0
            utilization = gpu.get("utilization_pct")
            memory = bar(used / total if total else None, width=10)
            memory.append(f" {used / 1024:.0f}/{total / 1024:.0f}")
            table.add_row(
                runner_id,
                str(gpu.get("index", "?")),
                str(gpu.get("name", "?")).removeprefix("NVIDIA "),
                memory,
                f"{utilization:.0f}%" if utilization is not None else "-",
                gpu.get("job_id") or "",
            )
    return table


class TrainingProgress:
    """A progress bar for ``submit --wait``: steps, status, loss and time left."""

    def __init__(self, console: Console, job_id: str) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.fields[job]}"),
            TextColumn("{task.fields[status]}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.fields[max_steps]} steps"),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID = self._progress.add_task(
            job_id, total=None, job=job_id, status="queued", max_steps="?", loss="-"
        )
        self._step = 0

    def __enter__(self) -> TrainingProgress:
        self._progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._progress.stop()

    def update(self, report: Mapping[str, Any]) -> None:
        """A progress report: status and loss; the step unless the log is already past it."""
        status = report.get("status", "?")
        step = report.get("step") or 0
        if status in ("queued", "scheduled"):
            self._step = step  # a new attempt resumes from its checkpoint
        self._step = max(self._step, step)
        max_steps = report.get("max_steps")
        self._progress.update(
            self._task,
            total=max_steps,
            completed=self._step,
            status=status,
            max_steps=max_steps if max_steps is not None else "?",
            loss=_number(report.get("loss")),
        )

    def step(self, step: int, max_steps: int) -> None:
        """A step read from the training log, between progress reports."""
        self._step = max(self._step, step)
        self._progress.update(
            self._task, total=max_steps, completed=self._step, max_steps=max_steps
        )


def runners_table(answer: Mapping[str, Any]) -> Table:
    """Runners with their drain and each unhealthy GPU's reasons."""
    table = Table(title="runners", title_justify="left")
    for name in ("RUNNER", "ALIVE", "DRAINED", "GPUS", "UNHEALTHY"):
        table.add_column(name, overflow="fold")
    for runner in answer.get("runners", []):
        drained = "-"
        if runner.get("drained"):
            drained = runner.get("drain_reason") or "yes"
            if runner.get("drain_stops_jobs"):
                drained += " (jobs requeued)"
        gpus = runner.get("gpus") or []
        sick = [
            f"GPU {g['index']}: {'; '.join(g.get('reasons') or [])}"
            for g in gpus
            if not g.get("healthy", True)
        ]
        table.add_row(
            runner["runner_id"],
            "yes" if runner.get("alive") else "no",
            drained,
            str(len(gpus)),
            "\n".join(sick) or "-",
        )
    return table
