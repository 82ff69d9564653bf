"""Receiving a multipart upload as a stream: checked line by line, spooled to disk.

Litestar's own form parsing reads the whole body into memory first; a dataset may be
hundreds of MiB, so the body is parsed here chunk by chunk with ``multipart``'s push parser
(sans-IO), each chunk of the ``file`` part going to a temporary file and through the JSONL
check as it arrives. Memory use is one chunk plus the current line, whatever the file size.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import IO, Any, Final

from litestar import Request
from multipart import MultipartError, MultipartSegment, PushMultipartParser, parse_options_header

from ...core.dataset_files import JsonlCheck
from .openai_errors import OpenAIProblem

#: Form fields other than the file are short (``purpose``): refuse anything longer.
MAX_FIELD_BYTES: Final = 1024
#: Room for boundaries, part headers and the ``purpose`` field around the file itself.
MULTIPART_OVERHEAD: Final = 64 * 1024


@dataclass
class Upload:
    """The parts of an upload: the spooled file (at offset 0), its check, the fields."""

    content: IO[bytes]
    filename: str
    size: int
    problem: str | None
    records: int
    preference_records: int
    fields: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        self.content.close()


class _Receiver:
    def __init__(self, max_bytes: int, spool_dir: str | None) -> None:
        self.max_bytes = max_bytes
        self.spool_dir = spool_dir
        self.fields: dict[str, str] = {}
        self.content: IO[bytes] | None = None
        self.filename = ""
        self.size = 0
        self.check = JsonlCheck()
        self._segment: MultipartSegment | None = None
        self._field = bytearray()

    def on_event(self, event: Any) -> None:
        if isinstance(event, MultipartSegment):
            self._begin(event)
        elif event is None:
            self._end()
        else:
            self._data(bytes(event))

    def _begin(self, segment: MultipartSegment) -> None:
        self._segment = segment
        if segment.name == "file":
            if self.content is not None:
                raise OpenAIProblem("invalid_file", "send one file per upload", param="file")
            self.content = tempfile.TemporaryFile(dir=self.spool_dir)  # noqa: SIM115 - closed by Upload
            self.filename = segment.filename or "upload.jsonl"

    def _data(self, chunk: bytes) -> None:
        segment = self._segment
        if segment is not None and segment.name == "file" and self.content is not None:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise OpenAIProblem(
                    "payload_too_large",
                    f"the file is larger than this server accepts ({self.max_bytes} bytes; "
                    "FILES_MAX_BYTES)",
                    param="file",
                )
            self.content.write(chunk)
            self.check.feed(chunk)
            return
        self._field += chunk
        if len(self._field) > MAX_FIELD_BYTES:
            name = segment.name if segment is not None else "?"
            raise OpenAIProblem("validation_error", f"form field {name!r} is too long", param=name)

    def _end(self) -> None:
        segment, self._segment = self._segment, None
        if segment is not None and segment.name and segment.name != "file":
            self.fields[segment.name] = self._field.decode("utf-8", errors="replace")
        self._field.clear()


async def receive_upload(
    request: Request[Any, Any, Any], *, max_bytes: int, spool_dir: str | None = None
) -> Upload:
    """Parse ``multipart/form-data`` from the request stream; 400 for anything else."""
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get("boundary")
    if media_type != "multipart/form-data" or not boundary:
        raise OpenAIProblem(
            "validation_error",
            "upload files as multipart/form-data with the fields 'purpose' and 'file'",
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD:
        # Refused before reading: the form around the file is never this large.
        raise OpenAIProblem(
            "payload_too_large",
            f"the upload is larger than this server accepts ({max_bytes} bytes; FILES_MAX_BYTES)",
            param="file",
        )
    receiver = _Receiver(max_bytes, spool_dir)
    try:
        parser = PushMultipartParser(boundary, max_segment_count=16)
        async for chunk in request.stream():
            if chunk:
                for event in parser.parse(chunk):
                    receiver.on_event(event)
        for event in parser.parse(b""):
            receiver.on_event(event)
        parser.close()
    except MultipartError as exc:
        if receiver.content is not None:
            receiver.content.close()
        raise OpenAIProblem("validation_error", f"malformed multipart body: {exc}") from exc
    except BaseException:
        if receiver.content is not None:
            receiver.content.close()
        raise
    if receiver.content is None:
        raise OpenAIProblem("validation_error", "the upload has no 'file' field", param="file")
    receiver.content.seek(0)
    return Upload(
        content=receiver.content,
        filename=receiver.filename,
        size=receiver.size,
        problem=receiver.check.finish(),
        records=receiver.check.records,
        preference_records=receiver.check.preference_records,
        fields=receiver.fields,
    )
