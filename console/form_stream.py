"""A multipart form read as it arrives: small text fields kept, the one file part written to a sink with a cap.

Starlette's own form parser spools large files to the system's temporary folder and reads the whole body
before a handler runs, with no limit; uploads here go only where the caller says (memory for a scan, the
console's data folder for a dataset) and stop counting at the cap. A body over the cap is still read (and
thrown away) up to DRAIN_BYTES more, so the client, still sending, gets the refusal instead of a reset
connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from weldstream.errors import InvalidInput

DRAIN_BYTES = 64 << 20
MAX_FIELD_BYTES = 4096
MAX_FIELDS = 32


@dataclass
class Form:
    """What a form carried: its text fields, the file part's name (as the client gave it) and its size."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str = ""
    size: int = 0
    has_file: bool = False


class _Reader:
    """The parser's callbacks: which part is open, and where its bytes go."""

    def __init__(self, sink: BinaryIO, file_field: str, max_bytes: int) -> None:
        self.sink, self.file_field, self.max_bytes = sink, file_field, max_bytes
        self.form = Form()
        self.over = False
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._name = ""
        self._text = bytearray()
        self._is_file = False

    def callbacks(self) -> dict:
        return {"on_part_begin": self._begin, "on_header_field": self._field, "on_header_value": self._value,
                "on_header_end": self._header_end, "on_headers_finished": self._headers_done,
                "on_part_data": self._data, "on_part_end": self._end}

    def _begin(self) -> None:
        self._headers, self._name, self._is_file = {}, "", False
        self._text.clear()

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = b"filename" in options
        if self._is_file and self._name == self.file_field:
            if self.form.has_file:
                raise InvalidInput(self.file_field, "was sent twice; send one file")
            self.form.has_file = True
            self.form.filename = options[b"filename"].decode("utf-8", "replace")
        elif len(self.form.fields) >= MAX_FIELDS:
            raise InvalidInput("form", f"has more than {MAX_FIELDS} fields")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file and self._name == self.file_field:
            self.form.size += end - start
            if self.form.size > self.max_bytes:
                self.over = True
            elif not self.over:
                self.sink.write(data[start:end])
        elif not self._is_file:
            self._text += data[start:end]
            if len(self._text) > MAX_FIELD_BYTES:
                raise InvalidInput(self._name or "form", f"is longer than {MAX_FIELD_BYTES} bytes")

    def _end(self) -> None:
        if not self._is_file and self._name:
            self.form.fields[self._name] = self._text.decode("utf-8", "replace")


async def read_form(request: Request, sink: BinaryIO, max_bytes: int, file_field: str = "file",
                    limit_text: str = "") -> Form:
    """The request's multipart form with its file part written to ``sink``; InvalidInput names what is wrong
    (not multipart, no file part, a file over ``max_bytes``: ``limit_text`` says which setting sets it)."""
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidInput("body", f"send a multipart/form-data form with the file in the field {file_field!r}")
    too_large = InvalidInput(file_field, f"is larger than the limit of {_mib(max_bytes)}{limit_text}")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + DRAIN_BYTES:
        raise too_large
    reader = _Reader(sink, file_field, max_bytes)
    parser = MultipartParser(boundary, reader.callbacks())
    drained = 0
    try:
        async for chunk in request.stream():
            if reader.over:
                drained += len(chunk)
                if drained > DRAIN_BYTES:
                    break
                continue
            parser.write(chunk)
        if not reader.over:
            parser.finalize()
    except MultipartParseError as exc:
        raise InvalidInput("body", f"is not a well-formed multipart form ({exc})") from None
    if reader.over:
        raise too_large
    if not reader.form.has_file:
        raise InvalidInput(file_field, "is missing: attach the file in this form field")
    return reader.form


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"
