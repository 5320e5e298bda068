"""A streaming multipart/form-data parser: fields kept as text, one file part passed on chunk by chunk.

aiohttp's own multipart reader calls its deprecated `StreamReader.unread_data()` whenever a read
crosses a part boundary, which turns into an error under `filterwarnings = error`; and the file part
must be hashed without being kept whole. This parser is fed whatever bytes arrive.
"""

from __future__ import annotations

import email.message
import email.utils
from collections.abc import Callable

#: Longest header block of one part, in bytes.
MAX_PART_HEADERS = 16 * 1024


def boundary_of(content_type: str) -> bytes:
    """The boundary of a multipart Content-Type header; ValueError when it has none."""
    boundary = _param(content_type, "content-type", "boundary")
    if not boundary:
        raise ValueError("multipart Content-Type without a boundary")
    return boundary.encode("latin-1")


class FormParser:
    """Feed it the body in any slices; afterwards read `fields`, `filename` and `has_file`."""

    def __init__(self, boundary: bytes, file_field: str, on_file: Callable[[bytes], None]) -> None:
        self._delimiter = b"\r\n--" + boundary
        self._buffer = bytearray(b"\r\n")  # so that the first boundary reads like every later one
        self._state = "preamble"
        self._file_field = file_field
        self._on_file = on_file
        self._name: str | None = None
        self._value = bytearray()
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.has_file = False

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while self._step():
            pass

    def close(self) -> None:
        if self._state != "done":
            raise ValueError("multipart body ended before its closing boundary")

    def _step(self) -> bool:
        """Consume what the buffer allows in the current state; False when more bytes are needed."""
        if self._state in ("preamble", "body"):
            return self._scan()
        if self._state == "boundary":
            if len(self._buffer) < 2:
                return False
            ending = bytes(self._buffer[:2])
            del self._buffer[:2]
            if ending == b"--":
                self._state = "done"
            elif ending == b"\r\n":
                self._state = "headers"
            else:
                raise ValueError("malformed multipart boundary line")
            return True
        if self._state == "headers":
            return self._read_headers()
        self._buffer.clear()  # done: the epilogue is ignored
        return False

    def _scan(self) -> bool:
        """Pass on part data up to the next delimiter, keeping a tail that may begin one."""
        at = self._buffer.find(self._delimiter)
        if at == -1:
            keep = len(self._delimiter) - 1
            if len(self._buffer) > keep:
                self._emit(bytes(self._buffer[:-keep]))
                del self._buffer[:-keep]
            return False
        self._emit(bytes(self._buffer[:at]))
        del self._buffer[: at + len(self._delimiter)]
        if self._state == "body":
            self._end_part()
        self._state = "boundary"
        return True

    def _read_headers(self) -> bool:
        if self._buffer.startswith(b"\r\n"):
            block, size = b"", 2
        else:
            end = self._buffer.find(b"\r\n\r\n")
            if end == -1:
                if len(self._buffer) > MAX_PART_HEADERS:
                    raise ValueError("multipart part headers too long")
                return False
            block, size = bytes(self._buffer[:end]), end + 4
        del self._buffer[:size]
        self._start_part(block.decode("utf-8", errors="replace"))
        self._state = "body"
        return True

    def _start_part(self, headers: str) -> None:
        disposition = ""
        for line in headers.split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-disposition":
                disposition = value.strip()
        self._name = _param(disposition, "content-disposition", "name")
        self._value = bytearray()
        if self._name == self._file_field:
            self.has_file = True
            self.filename = _param(disposition, "content-disposition", "filename")

    def _emit(self, data: bytes) -> None:
        if self._state != "body" or not data:
            return  # preamble bytes are ignored
        if self._name == self._file_field:
            self._on_file(data)
        else:
            self._value += data

    def _end_part(self) -> None:
        if self._name is not None and self._name != self._file_field:
            self.fields[self._name] = self._value.decode("utf-8", errors="replace")
        self._name, self._value = None, bytearray()


def _param(header_value: str, header: str, name: str) -> str | None:
    """One parameter of a structured header (quoted, escaped or RFC 2231), as the email package reads it."""
    message = email.message.Message()
    message[header] = header_value
    value = message.get_param(name, header=header)
    if value is None or isinstance(value, str):
        return value
    return email.utils.collapse_rfc2231_value(value)
