"""Creating a job: choosing its id, refusing what no host can run, answering with its place.

Ids: a client-chosen ``job_id`` wins; otherwise a job is named after the
last part of its output dir (``output/training_001`` -> ``training_001``), used when it is a
valid id and not taken (a taken one falls back rather than failing); otherwise a generated
id. With an ``Idempotency-Key`` the generated id and each command id derive from the key,
so a retried request repeats exactly the commands of the first and gets their outcomes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import posixpath
from typing import Any, Final

import msgspec

from ...bus.file_store import FileNotFound
from ...core.commands import SubmitJob
from ...core.dependencies import find_cycle
from ...core.errors import JobAlreadyExists, SwiftTrainerError
from ...core.ids import is_valid_job_id, new_job_id
from ...core.job import JobStatus
from ...core.spec import JobSpec, decode_spec
from ..auth.principal import principal
from ..deps import ApiDeps, matching_runner_sizes
from ..dispatch import idempotent_command_id, job_id_of, reply_status, send
from ..durations import describe_wait
from ..problems import ApiProblem
from ..queue.order import place_in_queue, view_past
from .schemas import CreateJobRequest, CreateJobResponse

_log = logging.getLogger(__name__)


#: The longest ``Prefer: wait=N`` a create honours: a request is not a place to idle.
MAX_PREFER_WAIT_S: Final = 5.0
#: How long a create waits for the scheduler's rank when the request states no preference.
DEFAULT_WAIT_S: Final = 1.0


def prefer_wait_s(prefer: str | None) -> float:
    """``wait=N`` from a ``Prefer`` header (RFC 7240), capped at 5 s; ``wait=0`` answers at
    once. Absent or malformed, the create waits ``DEFAULT_WAIT_S`` (a preference the server
    cannot honour is ignored, as the RFC says)."""
    if not prefer:
        return DEFAULT_WAIT_S
    for part in prefer.replace(";", ",").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        try:
            seconds = float(value.strip().strip('"'))
        except ValueError:
            return DEFAULT_WAIT_S
        if not math.isfinite(seconds) or seconds < 0:
            return DEFAULT_WAIT_S
        return min(seconds, MAX_PREFER_WAIT_S)
    return DEFAULT_WAIT_S


def id_from_output_dir(output_dir: str | None) -> str | None:
    if not output_dir:
        return None
    name = posixpath.basename(posixpath.normpath(output_dir.rstrip("/")))
    return name if is_valid_job_id(name) else None


def generated_id(idempotency_key: str | None) -> str:
    if idempotency_key is None:
        return new_job_id()
    return "job-" + hashlib.sha256(b"job-id\x00" + idempotency_key.encode()).hexdigest()[:12]


def candidate_ids(body: CreateJobRequest, idempotency_key: str | None) -> list[tuple[str, str]]:
    """``(job_id, kind)`` to try in order; ``kind`` scopes the idempotent command id."""
    if body.job_id is not None:
        return [(body.job_id, "explicit")]
    derived = id_from_output_dir(body.output_dir)
    generated = generated_id(idempotency_key)
    if derived is not None and derived != generated:
        return [(derived, "derived"), (generated, "generated")]
    return [(generated, "generated")]


def spec_for(body: CreateJobRequest, job_id: str) -> JobSpec:
    fields: dict[str, Any] = msgspec.to_builtins(body)
    fields.pop("job_id", None)
    fields = {k: v for k, v in fields.items() if v is not None}
    fields["output_dir"] = body.output_dir or f"output/{job_id}"
    return decode_spec(fields)


async def check_satisfiable(deps: ApiDeps, body: CreateJobRequest) -> None:
    if body.nodes > 1 or body.host_labels:
        await _check_gang_satisfiable(deps, body)
        return
    capacity = await deps.gpu_capacity()
    if capacity is not None and body.gpu_count > capacity:
        raise ApiProblem(
            "unsatisfiable",
            f"gpu_count {body.gpu_count} can never be placed: a job's GPUs must all be on one "
            f"host, and the largest known runner has {capacity}; ask for at most {capacity}",
        )


async def _check_gang_satisfiable(deps: ApiDeps, body: CreateJobRequest) -> None:
    """Unsatisfiable: no set of ``nodes`` runners carrying the labels has ``gpu_count`` GPUs
    each (runners ever heard from; dead ones may return)."""
    sizes = await matching_runner_sizes(deps.read_model, body.host_labels)
    if sizes is None:
        return
    fitting = sum(1 for size in sizes if size >= body.gpu_count)
    if fitting >= body.nodes:
        return
    labels = ",".join(f"{k}={v}" for k, v in sorted(body.host_labels.items()))
    which = f"runners labelled {labels}" if labels else "runners"
    raise ApiProblem(
        "unsatisfiable",
        f"nodes {body.nodes} x gpu_count {body.gpu_count} can never be placed: it needs "
        f"{body.nodes} {which} with {body.gpu_count} GPUs each, and {fitting} known "
        f"{'runner has' if fitting == 1 else 'runners have'} that many",
    )


async def check_files(deps: ApiDeps, body: CreateJobRequest) -> None:
    """An uploaded dataset must exist, be the job owner's and have passed its check."""
    for name, file_id in (
        ("training_file", body.training_file),
        ("validation_file", body.validation_file),
    ):
        if file_id is None:
            continue
        if deps.files is None:
            raise ApiProblem("invalid_spec", f"{name}: this API has no file store")
        try:
            record = await deps.files.get(file_id)
        except FileNotFound:
            raise ApiProblem("invalid_spec", f"{name}: no file {file_id!r}") from None
        if not principal().may_train_on(record.owner):
            # Another owner's file reads exactly like an unknown one.
            raise ApiProblem("invalid_spec", f"{name}: no file {file_id!r}")
        if record.status != "processed":
            raise ApiProblem(
                "invalid_spec",
                f"{name}: file {file_id} cannot be trained on: "
                f"{record.status_details or record.status}",
            )


async def check_dependencies(deps: ApiDeps, job_id: str | None, body: CreateJobRequest) -> None:
    """Every job in ``after`` must exist, and waiting for it must not close a loop.

    A loop can only arise through an id that was deleted and submitted again while a held
    job still names it; the search follows ``after`` of the jobs that may still wait
    (waiting, held), through the read model, one lookup per job.
    """
    if not body.after:
        return
    named = [condition.job for condition in body.after]
    found = await deps.read_model.get_jobs(named)
    caller = principal()
    missing = [
        job
        for job, summary in zip(named, found, strict=True)
        if summary is None or not caller.may_see(summary.owner)
    ]
    if missing:
        raise ApiProblem(
            "invalid_spec",
            f"after names unknown jobs: {', '.join(sorted(set(missing)))}; submit them first",
        )
    if job_id is None:
        return
    graph: dict[str, tuple[str, ...]] = {}
    frontier = set(named)
    while frontier:
        batch = sorted(frontier - graph.keys())
        frontier = set()
        for name, summary in zip(batch, await deps.read_model.get_jobs(batch), strict=True):
            waits = summary is not None and summary.status in _MAY_WAIT
            graph[name] = tuple(c.job for c in summary.after) if summary and waits else ()
            frontier.update(graph[name])
        frontier -= graph.keys()
    cycle = find_cycle(job_id, named, lambda x: graph.get(x, ()))
    if cycle is not None:
        raise ApiProblem(
            "invalid_spec",
            f"after would make a cycle: {' -> '.join(cycle)}; a job cannot wait for itself",
        )


#: Statuses in which a job's ``after`` still matters.
_MAY_WAIT: Final = frozenset({JobStatus.WAITING, JobStatus.HELD})


def _waiting_answer(job_id: str, spec: JobSpec, output_dir: str) -> CreateJobResponse:
    conditions = ", ".join(f"{c.job} {c.on}" for c in spec.after)
    return CreateJobResponse(
        job_id=job_id,
        status=JobStatus.WAITING,
        output_dir=output_dir,
        message=f"job {job_id} is waiting for: {conditions}; it queues once all hold",
    )


async def submit_job(
    deps: ApiDeps,
    body: CreateJobRequest,
    idempotency_key: str | None,
    *,
    wait_s: float = DEFAULT_WAIT_S,
) -> CreateJobResponse:
    """Create the job; a queued job's answer waits up to ``wait_s`` (``Prefer: wait=N``,
    1 s by default, 0 for none) for the scheduler's rank instead of answering pending."""
    candidates = candidate_ids(body, idempotency_key)
    specs = [spec_for(body, job_id) for job_id, _ in candidates]  # InvalidSpec -> 422 first
    await check_satisfiable(deps, body)
    await check_files(deps, body)
    await check_dependencies(deps, candidates[0][0] if body.job_id else None, body)
    for index, ((job_id, kind), spec) in enumerate(zip(candidates, specs, strict=True)):
        command_id = idempotent_command_id(idempotency_key, f"create:{kind}")
        try:
            reply = await send(deps, SubmitJob(job_id=job_id, spec=spec), command_id=command_id)
        except SwiftTrainerError as exc:
            fallback_left = kind == "derived" and index + 1 < len(candidates)
            if exc.code == JobAlreadyExists.code and fallback_left:
                continue
            raise
        final_id = job_id_of(reply, job_id)
        status = reply_status(reply) or (JobStatus.QUEUED if spec.auto_start else JobStatus.HELD)
        if status is JobStatus.WAITING:
            return _waiting_answer(final_id, spec, body.output_dir or f"output/{final_id}")
        output_dir = body.output_dir or f"output/{final_id}"
        queued_at = reply.events[-1].position if reply.events else None
        return await _answer(
            deps, final_id, status, spec.priority, output_dir, queued_at=queued_at, wait_s=wait_s
        )
    raise AssertionError("the last candidate id never falls back")  # pragma: no cover


async def _answer(
    deps: ApiDeps,
    job_id: str,
    status: JobStatus,
    priority: int,
    output_dir: str,
    *,
    queued_at: int | None,
    wait_s: float,
) -> CreateJobResponse:
    if status is not JobStatus.QUEUED:
        return CreateJobResponse(
            job_id=job_id,
            status=status,
            output_dir=output_dir,
            message=(
                f"job {job_id} is held (auto_start false); start it "
                f"(swift-trainer jobs start {job_id}) to queue it"
            ),
        )
    try:
        view = None
        if queued_at is not None and wait_s > 0:
            view = await view_past(deps.read_model, queued_at, wait_s)
        place = await place_in_queue(
            deps.read_model, job_id, priority, deps.clock(), view, queued_at=queued_at
        )
        if place.source in ("scheduler_placing", "scheduler_pending"):
            summary = await deps.read_model.get_job(job_id)
            if summary is not None and summary.status is not JobStatus.QUEUED:
                return CreateJobResponse(
                    job_id=job_id,
                    status=summary.status,
                    output_dir=output_dir,
                    message=f"job {job_id} was placed on free GPUs at once: it is "
                    f"{summary.status.value}",
                )
    except Exception:  # the job is recorded: a failed queue lookup must not turn that into an error
        _log.warning("queue lookup for new job %s failed", job_id, exc_info=True)
        return CreateJobResponse(
            job_id=job_id,
            status=status,
            output_dir=output_dir,
            message=f"job {job_id} is queued; it starts when matching GPUs are free",
            estimated_wait_time="unknown",
        )
    if place.position is None:
        doing = (
            "the scheduler is placing it on free GPUs now"
            if place.source == "scheduler_placing"
            else "the scheduler has not ranked it yet, so it has no position "
            "(swift-trainer queue shows it once ranked)"
        )
        return CreateJobResponse(
            job_id=job_id,
            status=status,
            output_dir=output_dir,
            message=f"job {job_id} is queued; {doing}",
            estimated_wait_time="unknown",
            queue_source=place.source,
        )
    return CreateJobResponse(
        job_id=job_id,
        status=status,
        output_dir=output_dir,
        message=(
            f"job {job_id} is queued at position {place.position}; it starts when matching "
            "GPUs are free"
        ),
        queue_position=place.position,
        estimated_wait_time=describe_wait(place.estimated_wait_s),
        estimated_wait_s=place.estimated_wait_s,
        estimated_start=place.estimated_start,
        queue_source=place.source,
    )
