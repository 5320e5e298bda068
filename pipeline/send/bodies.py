"""Reading an answer's body: decompressed here, a piece at a time, so a size cap counts what it decodes to.

aiohttp's own decoding (`resp.read()`) inflates a body whole: 65 KB of gzip on the wire became 64 MiB in
memory, and `Content-Length` is the compressed size. The sessions that read answers turn it off
(`auto_decompress=False`) and ask only for what is decoded here (ACCEPT_ENCODING); `Decoder` inflates at
most a given number of bytes per step, so `read_capped` never holds more than the cap plus one network
chunk, whatever the compression ratio. A body in an encoding not decoded here is refused, never passed on
compressed.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator

import aiohttp

#: The encodings decoded here, as sent in Accept-Encoding.
ACCEPT_ENCODING = "gzip, deflate"

#: zlib's window bits for each encoding: gzip (and, by the same header check, zlib), zlib-wrapped deflate.
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}

#: Bytes inflated per step when no cap bounds them (a download written to a file as it comes).
STEP_BYTES = 1024 * 1024

#: gzip members read at most in one body: concatenated members are legal, thousands of them are an attack.
MAX_MEMBERS = 64


class UndecodableBody(Exception):
    """The body's Content-Encoding is not one decoded here, or its bytes are not what it claims."""


class Decoder:
    """Inflates a body as its bytes arrive, never more than `limit` bytes per call to `feed`."""

    def __init__(self, encoding: str | None) -> None:
        name = (encoding or "identity").strip().lower()
        if name not in ("identity", "", *_WBITS):
            raise UndecodableBody(
                f"content-encoding {encoding!r} is not supported (asked for {ACCEPT_ENCODING})"
            )
        self._name = name
        self._inflate: zlib._Decompress | None = None
        self._members = 0

    @property
    def identity(self) -> bool:
        """The body is sent as it is: its Content-Length is its size."""
        return self._name in ("identity", "")

    def feed(self, data: bytes, limit: int) -> Iterator[bytes]:
        """The decoded bytes of `data`, in pieces of at most `limit` bytes; stop iterating at any time."""
        if self.identity:
            for start in range(0, len(data), limit):
                yield data[start : start + limit]
            return
        try:
            yield from self._inflated(data, limit)
        except zlib.error as exc:
            raise UndecodableBody(f"the {self._name} body does not decode: {exc}") from None

    def _inflated(self, data: bytes, limit: int) -> Iterator[bytes]:
        while True:
            if self._inflate is None or self._inflate.eof:
                data = self._next_member(data) if data else b""
                if not data:
                    return
            assert self._inflate is not None
            piece = self._inflate.decompress(data, limit)
            # Input left over: what the limit kept back, or what follows the end of a gzip member.
            data = self._inflate.unconsumed_tail or self._inflate.unused_data
            if piece:
                yield piece
            if not data and len(piece) < limit:  # all consumed, and nothing pending inside zlib
                return

    def _next_member(self, data: bytes) -> bytes:
        """Start inflating the next gzip member (or the deflate stream); returns the bytes to feed it."""
        if self._inflate is not None and not data.startswith(b"\x1f\x8b"):
            return b""  # trailing bytes after the last member: ignored, as browsers and aiohttp do
        self._members += 1
        if self._members > MAX_MEMBERS:
            raise UndecodableBody(f"more than {MAX_MEMBERS} gzip members")
        wbits = _WBITS[self._name]
        if self._name == "deflate" and data[0] & 0x0F != 8:  # raw deflate, as some servers send it
            wbits = -zlib.MAX_WBITS
        self._inflate = zlib.decompressobj(wbits)
        return data

    def check_complete(self) -> None:
        """Raise UndecodableBody when the body ended inside a compressed stream (truncated)."""
        if self._inflate is not None and not self._inflate.eof:
            raise UndecodableBody(f"the {self._name} body is truncated")


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes | None:
    """The decoded body, or None as soon as it is known to be over `cap` bytes (the rest is never read:
    close the response). Raises UndecodableBody."""
    decoder = Decoder(resp.headers.get("Content-Encoding"))
    if decoder.identity and resp.content_length is not None and resp.content_length > cap:
        return None
    body = bytearray()
    async for chunk in resp.content.iter_any():
        for piece in decoder.feed(chunk, cap + 1 - len(body)):
            body += piece
            if len(body) > cap:
                return None
    decoder.check_complete()
    return bytes(body)


async def iter_decoded(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The decoded body, STEP_BYTES at most at a time (for a download written out as it comes)."""
    decoder = Decoder(resp.headers.get("Content-Encoding"))
    async for chunk in resp.content.iter_any():
        for piece in decoder.feed(chunk, STEP_BYTES):
            yield piece
    decoder.check_complete()
