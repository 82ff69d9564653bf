"""``/v1/files``: upload, list, retrieve, delete and download datasets (the object store).

Uploads stream to disk and through the JSONL check (``uploads``), then into the JetStream
object store, from which every runner fetches by id. A file whose check fails is still
stored, with ``status: error`` and ``status_details`` naming the first bad line, as the
OpenAI API does; a job naming it is refused.

Owners: every file belongs to the uploading key's owner (``local`` without keys). A caller
sees its own owner's files and an admin sees every file; another owner's file answers
exactly like an unknown id (see docs/tenancy.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import os
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import quote

from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromQuery, PathParameter, QueryParameter
from litestar.response import Stream

from ...bus.file_store import FileNotFound, FileStore
from ...core.dataset_files import FILE_ID_PATTERN, FileRecord, new_file_id
from ...projections.read_models.views import MetricPoint
from ..auth.principal import LOCAL_OWNER, principal
from ..deps import ApiDeps, Deps
from .openai_errors import OpenAIProblem
from .schemas import FileDeleted, FileList, FileObject
from .uploads import receive_upload

PURPOSES: Final = ("fine-tune",)
RESULTS_PURPOSE: Final = "fine-tune-results"

FileIdPath = Annotated[str, PathParameter(pattern=FILE_ID_PATTERN, max_length=70)]


def file_store(deps: ApiDeps) -> FileStore:
    if deps.files is None:
        raise OpenAIProblem("command_unavailable", "this API process has no object store for files")
    return deps.files


def safe_filename(name: str) -> str:
    """The client's file name without folders, quotes or control characters (it is echoed
    in a Content-Disposition header)."""
    base = os.path.basename(name.replace("\\", "/"))
    cleaned = "".join("_" if ch in '"\\' or ord(ch) < 32 or ord(ch) == 127 else ch for ch in base)
    return cleaned[:255] or "upload.jsonl"


def content_disposition(filename: str) -> str:
    """An ASCII fallback plus the exact (UTF-8) name, as RFC 6266 allows."""
    fallback = filename.encode("ascii", "replace").decode().replace("?", "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename)}"


def file_object(record: FileRecord) -> FileObject:
    return FileObject(
        id=record.id,
        bytes=record.bytes,
        created_at=record.created_at,
        filename=record.filename,
        purpose=record.purpose,
        status=record.status,
        status_details=record.status_details,
    )


async def owned_file(deps: ApiDeps, file_id: str) -> FileRecord:
    try:
        record = await file_store(deps).get(file_id)
    except FileNotFound:
        raise OpenAIProblem("file_not_found", f"no file {file_id!r}", param="file_id") from None
    if not principal().may_see_file(record.owner):
        raise OpenAIProblem("file_not_found", f"no file {file_id!r}", param="file_id")
    return record


def page_of(records: list[FileRecord], after: str | None, limit: int) -> tuple[list[Any], bool]:
    """The page after ``after`` (an id in ``records``' order) and whether more follow."""
    start = 0
    if after is not None:
        ids = [r.id for r in records]
        if after not in ids:
            raise OpenAIProblem(
                "validation_error", f"no file {after!r} to list after", param="after"
            )
        start = ids.index(after) + 1
    chunk = records[start : start + limit + 1]
    return chunk[:limit], len(chunk) > limit


# --- the metrics CSV of a finished job ---------------------------------------------------------


def results_file_id(job_id: str) -> str:
    """A fixed id per job, so writing the results file twice writes the same file."""
    return "file-" + hashlib.sha256(b"results\x00" + job_id.encode()).hexdigest()[:24]


def metrics_csv(
    points: list[MetricPoint],
    eval_results: Mapping[str, float] | None = None,
    final_step: int | None = None,
) -> bytes:
    """The step metrics, one row per step, and the evaluation's scores on the last row.

    Each evaluated dataset gets an ``eval:<dataset>`` column, empty but on the final row
    (as OpenAI's ``full_valid_loss`` is): the scores are of the final model. A job
    without step metrics gets one row at ``final_step`` for its scores.
    """
    scores = dict(sorted((eval_results or {}).items()))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["step", "train_loss", "learning_rate", "valid_loss", "epoch", "at"]
        + [f"eval:{name}" for name in scores]
    )
    rows: list[list[object]] = [
        [p.step, p.loss, p.learning_rate, p.eval_loss, p.epoch, p.at.isoformat()] for p in points
    ]
    if scores and not rows:
        rows.append([final_step, None, None, None, None, None])
    for index, row in enumerate(rows):
        last = index == len(rows) - 1
        writer.writerow(row + [score if last else None for score in scores.values()])
    return out.getvalue().encode()


async def ensure_results_file(
    deps: ApiDeps,
    job_id: str,
    known: set[str],
    owner: str | None = None,
    *,
    eval_results: Mapping[str, float] | None = None,
    final_step: int | None = None,
) -> str | None:
    """The id of the job's metrics CSV, written to the object store on first need.

    It is written once the job has succeeded, when its evaluation's scores (on the same
    event as the success) are known. It belongs to the job's owner, so only they (and
    admins) may read it.
    """
    if deps.files is None:
        return None
    file_id = results_file_id(job_id)
    if file_id in known:
        return file_id
    try:
        await deps.files.get(file_id)
    except FileNotFound:
        points = await deps.read_model.metric_history(job_id)
        content = metrics_csv(points, eval_results, final_step)
        record = FileRecord(
            id=file_id,
            filename=f"{job_id}-metrics.csv",
            purpose=RESULTS_PURPOSE,
            bytes=len(content),
            created_at=int(time.time()),
            status="processed",
            owner=owner or LOCAL_OWNER,
        )
        await deps.files.put(record, io.BytesIO(content))
    known.add(file_id)
    return file_id


# --- the endpoints ---------------------------------------------------------------------------


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def _stream_file(path: Path) -> AsyncIterator[bytes]:
    """The file in chunks; removed once sent (it is a temporary copy)."""
    try:
        source = await asyncio.to_thread(open, path, "rb")
        with source:
            while chunk := await asyncio.to_thread(source.read, 256 * 1024):
                yield chunk
    finally:
        _remove(path)


class FilesController(Controller):
    path = "/files"
    tags = ("openai",)
    #: Uploads enforce FILES_MAX_BYTES themselves while streaming.
    request_max_body_size = None

    @post(
        "/",
        status_code=200,
        summary="Upload a file (multipart: purpose, file)",
        request_max_body_size=None,
    )
    async def upload(self, *, deps: Deps, request: Request[Any, Any, Any]) -> FileObject:
        store = file_store(deps)
        upload = await receive_upload(request, max_bytes=deps.files_max_bytes)
        try:
            purpose = upload.fields.get("purpose")
            if purpose not in PURPOSES:
                raise OpenAIProblem(
                    "validation_error",
                    f"purpose must be one of {list(PURPOSES)}, got {purpose!r}",
                    param="purpose",
                )
            record = FileRecord(
                id=new_file_id(),
                filename=safe_filename(upload.filename),
                purpose=purpose,
                bytes=upload.size,
                created_at=int(time.time()),
                status="error" if upload.problem else "processed",
                status_details=upload.problem,
                records=upload.records,
                preference_records=upload.preference_records,
                owner=principal().file_owner,
            )
            stored = await store.put(record, upload.content)  # type: ignore[arg-type]
        finally:
            upload.close()
        return file_object(stored)

    @get("/", summary="List files")
    async def list_files(
        self,
        *,
        deps: Deps,
        after: Annotated[str | None, QueryParameter(max_length=70)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 10_000,
        order: FromQuery[Literal["asc", "desc"]] = "desc",
        purpose: Annotated[str | None, QueryParameter(max_length=64)] = None,
    ) -> FileList:
        caller = principal()
        records = [
            r
            for r in await file_store(deps).list()
            if caller.may_see_file(r.owner) and (purpose is None or r.purpose == purpose)
        ]
        if order == "desc":
            records.reverse()
        page, more = page_of(records, after, limit)
        data = [file_object(r) for r in page]
        return FileList(
            data=data,
            has_more=more,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )

    @get("/{file_id:str}", summary="Retrieve a file")
    async def retrieve(self, deps: Deps, file_id: FileIdPath) -> FileObject:
        return file_object(await owned_file(deps, file_id))

    @delete("/{file_id:str}", status_code=200, summary="Delete a file")
    async def delete_file(self, deps: Deps, file_id: FileIdPath) -> FileDeleted:
        await owned_file(deps, file_id)
        await file_store(deps).delete(file_id)
        return FileDeleted(id=file_id, deleted=True)

    @get("/{file_id:str}/content", summary="Download a file's content")
    async def content(self, deps: Deps, file_id: FileIdPath) -> Response[Any]:
        record = await owned_file(deps, file_id)
        fd, name = tempfile.mkstemp(prefix="swift-trainer-download-")
        os.close(fd)
        target = Path(name)
        try:
            await file_store(deps).download(file_id, target)
        except BaseException:
            _remove(target)
            raise
        media = "text/csv" if record.filename.endswith(".csv") else "application/jsonl"
        return Stream(
            _stream_file(target),
            media_type=media,
            headers={
                "Content-Length": str(record.bytes),
                "Content-Disposition": content_disposition(record.filename),
            },
        )
