"""Reading a request body from ASGI ``receive``, within limits enforced as it streams.

The server (h11) has already undone the transfer framing: a ``Transfer-Encoding: chunked``
body arrives here as its data, exactly like a ``Content-Length`` one. Limits:

- a declared ``Content-Length`` over `MAX_BODY` is refused before any of the body is read;
- the bytes received are counted as they arrive and refused past `MAX_BODY`;
- a gzip body (``Content-Encoding: gzip``, one member or several) or a deflate body
  (``Content-Encoding: deflate``, one stream, zlib-wrapped as RFC 9110 says or raw as some
  clients send it) is inflated as it arrives, never more than `MAX_BODY` + 1 bytes of output
  in all, so a bomb (500 KB that would inflate to 500 MB) costs at most `MAX_BODY` of memory
  before it is refused. Any other coding is read as it comes.

Failures are `BodyError` with the HTTP status to answer (400, 413, or 503 when the process
already holds `MAX_BUFFERED` bytes of bodies); the caller bounds the time it waits for the
body.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

MAX_BODY = 500 * 1024
MAX_BUFFERED = 32 * 1024 * 1024
"""Body bytes one process holds at once: 64 bodies of the largest size."""
TOO_LARGE = f"body must be at most {MAX_BODY} bytes"


class BodyError(Exception):
    """The body cannot be used; ``status`` is the answer (413 too large, 400 malformed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


ENCODINGS = ("gzip", "deflate")
"""The ``Content-Encoding``s inflated (`Inflater`)."""


def _zlib_wrapped(head: bytes) -> bool:
    """Whether a deflate body's first two bytes are a zlib header (RFC 1950): method 8, a
    window of at most 32 KB, no preset dictionary, and the pair a multiple of 31.

    A raw stream never starts so: a low nibble of 8 would be a non-final stored block, which
    encoders start with 0x00 (the rest of that byte is padding)."""
    cmf, flg = head[0], head[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and not flg & 0x20 and (cmf << 8 | flg) % 31 == 0


class Inflater:
    """Inflates gzip or deflate data fed in pieces, refusing output past ``limit`` bytes as it goes."""

    def __init__(self, encoding: str = "gzip", limit: int = MAX_BODY) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"not an encoding this inflates: {encoding!r}")
        self.encoding = encoding
        self.limit = limit
        self.invalid = f"body is not valid {encoding}"
        self._out = bytearray()
        # deflate: the first bytes are held until two of them tell a zlib header from raw data
        self._head = b""
        self._member: Any = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS) if encoding == "gzip" else None

    def feed(self, data: bytes) -> None:
        """Inflate ``data``. Raises `BodyError` 413 past the limit, 400 if it is not ``encoding``."""
        if self._member is None:
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
            self._member = zlib.decompressobj(wbits=zlib.MAX_WBITS if _zlib_wrapped(data) else -zlib.MAX_WBITS)
        try:
            while data:
                # max_length is never 0 here (0 would mean "no limit"): len(_out) <= limit
                self._out += self._member.decompress(data, self.limit + 1 - len(self._out))
                if len(self._out) > self.limit:
                    raise BodyError(413, TOO_LARGE)
                if self._member.eof:
                    data = self._member.unused_data
                    if data and self.encoding == "deflate":
                        raise BodyError(400, self.invalid)  # one stream; bytes after it are not the body
                    if data:  # the next member of a multi-member gzip body
                        self._member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                else:
                    data = self._member.unconsumed_tail
        except zlib.error:
            raise BodyError(400, self.invalid) from None

    @property
    def inflated(self) -> int:
        return len(self._out)

    def finish(self) -> bytes:
        """The inflated body. Raises `BodyError` 400 if the (last) stream was cut short."""
        if self._member is None or not self._member.eof:
            raise BodyError(400, self.invalid)
        return bytes(self._out)


class BodyBudget:
    """Bytes of request bodies one process holds at once (received, not yet answered).

    Memory, not the number of requests, is what bodies cost: a client that trickles a body
    holds a few bytes and must not crowd out the others. Used from the event loop only.
    """

    def __init__(self, limit: int = MAX_BUFFERED) -> None:
        self.limit = limit
        self.held = 0

    def take(self, n: int) -> None:
        """Hold ``n`` more bytes; `BodyError` 503 (nothing held) when that passes the limit."""
        if self.held + n > self.limit:
            raise BodyError(503, "busy, retry")
        self.held += n

    def give(self, n: int) -> None:
        self.held -= n


async def read_body(
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    headers: Mapping[str, str],
    budget: BodyBudget | None = None,
    limit: int = MAX_BODY,
) -> bytes:
    """The whole body, inflated if gzip or deflate. Raises `BodyError`; a client that disconnects before
    the end raises `BodyError` 400 (there is nobody to answer, and nothing is queued).

    With a ``budget``, the bytes held are taken from it as they arrive (inflated bytes for
    gzip and deflate); on success the caller gives back ``len(body)`` once it has answered, on any
    failure (cancellation included) they are given back here.
    """
    declared = headers.get("content-length")
    if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
        raise BodyError(413, TOO_LARGE)
    budget = budget or BodyBudget(limit)
    encoding = headers.get("content-encoding", "").strip().lower()
    inflater = Inflater(encoding, limit) if encoding in ENCODINGS else None
    raw = bytearray()
    received = held = 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BodyError(400, "client disconnected")
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                raise BodyError(413, TOO_LARGE)
            if inflater is not None:
                inflater.feed(chunk)
            else:
                raw += chunk
            grown = (inflater.inflated if inflater is not None else len(raw)) - held
            budget.take(grown)
            held += grown
            if not message.get("more_body", False):
                break
        body = inflater.finish() if inflater is not None else bytes(raw)
    except BaseException:
        budget.give(held)
        raise
    return body
