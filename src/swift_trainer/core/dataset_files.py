"""Uploaded dataset files: their record, their ids, and the line-by-line JSONL check.

A dataset is uploaded once (``/v1/files``) and every runner fetches it by id, so a bad line
must be caught at upload, where the person who can fix it is waiting, not on a GPU host an
hour later. ``JsonlCheck`` sees the upload in whatever chunks the network delivers and keeps
only the current line, so an upload is never held whole in memory.

Accepted records are the ms-swift standard formats: ``messages`` (a list of
``{"role", "content"}`` objects) or ``query``/``response`` strings (``history``, ``system``
and DPO's ``rejected_response`` / ``rejected_messages`` may ride along).
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from .ids import new_id
from .spec import FILE_ID_PATTERN, FileId

__all__ = [
    "FILE_ID_PATTERN",
    "FileId",
    "FileRecord",
    "JsonlCheck",
    "check_record",
    "new_file_id",
]

FileStatus = Literal["uploaded", "processed", "error"]
#: Roles ms-swift's standard template understands.
ROLES: Final = frozenset({"system", "user", "assistant", "tool", "tool_call", "tool_response"})
#: A line longer than this is refused rather than buffered.
DEFAULT_MAX_LINE_BYTES: Final = 16 * 1024 * 1024


def new_file_id() -> str:
    """``file-`` and 24 hex digits, like the ids the OpenAI API hands out; time-ordered
    (``new_id``'s millisecond prefix), so files uploaded in one second still list in order."""
    return "file-" + new_id()[:24]


class FileRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What is known about one uploaded file, stored next to its content."""

    id: FileId
    filename: str
    purpose: str
    bytes: int
    created_at: int
    status: FileStatus
    #: Why the file cannot be trained on (the first bad line), when ``status`` is ``error``.
    status_details: str | None = None
    #: Records (non-blank lines) in the file.
    records: int = 0
    #: Records that carry a ``rejected_response`` or ``rejected_messages`` (a preference
    #: pair, what DPO trains on).
    preference_records: int = 0
    #: Who uploaded it; files are listed and served to their owner only.
    owner: str = "local"
    #: ``SHA-256=<urlsafe base64>`` as the object store computed it; runners cache by it.
    digest: str | None = None


def check_record(value: Any) -> str | None:
    """Why a decoded line is not an ms-swift record, or None when it is one."""
    if not isinstance(value, dict):
        return f"expected a JSON object, got {type(value).__name__}"
    if "messages" in value:
        return _check_messages(value["messages"])
    if "query" in value or "response" in value:
        for key in ("query", "response"):
            if not isinstance(value.get(key), str):
                return f"'{key}' must be a string"
        return None
    return "expected 'messages', or 'query' and 'response'"


def _check_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{index}] must be an object"
        role = message.get("role")
        if role not in ROLES:
            return f"messages[{index}].role must be one of {sorted(ROLES)}, got {role!r}"
        content = message.get("content")
        if not isinstance(content, str | list):
            return f"messages[{index}].content must be a string or a list of parts"
    return None


class JsonlCheck:
    """Feed chunks, then ``finish()``: the first bad line (1-based) and why, or None.

    After the first problem the rest is only counted, never decoded: one bad line decides
    the file's status, and the upload still completes so the client gets its answer.
    """

    def __init__(self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.line_number = 0
        self.records = 0
        self.preference_records = 0
        self.problem: str | None = None
        self._partial = bytearray()
        self._overlong = False

    def feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._keep(chunk[start:])
                return
            self._keep(chunk[start:end])
            self._line_done()
            start = end + 1

    def finish(self) -> str | None:
        if self._partial or self._overlong:
            self._line_done()
        if self.problem is None and self.records == 0:
            self.problem = "the file holds no records"
        return self.problem

    def _keep(self, piece: bytes) -> None:
        if self._overlong or self.problem is not None:
            return
        if len(self._partial) + len(piece) > self.max_line_bytes:
            self._overlong = True
            self._partial.clear()
            return
        self._partial += piece

    def _line_done(self) -> None:
        self.line_number += 1
        line, overlong = bytes(self._partial), self._overlong
        self._partial.clear()
        self._overlong = False
        if self.problem is not None:
            return
        if overlong:
            self._fail(f"longer than {self.max_line_bytes} bytes")
            return
        if not line.strip():
            return  # blank lines (a trailing newline, spacing) hold no record
        try:
            value = msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            self._fail(f"not valid JSON ({exc})")
            return
        why = check_record(value)
        if why is not None:
            self._fail(why)
            return
        self.records += 1
        if isinstance(value.get("rejected_response"), str) or isinstance(
            value.get("rejected_messages"), list
        ):
            self.preference_records += 1

    def _fail(self, why: str) -> None:
        self.problem = f"line {self.line_number}: {why}"
