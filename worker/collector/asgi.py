"""The little of ASGI the collector needs, without a framework: JSON answers and lifespan."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def respond(
    send: Send,
    status: int,
    payload: dict[str, Any] | None,
    extra: Sequence[tuple[bytes, bytes]] = (),
    close: bool = False,
) -> None:
    """One JSON answer. ``close`` ends the connection after it (a body left unread, a client
    being pushed back): the server then does not read the rest of what the client sends."""
    data = b"" if payload is None else json.dumps(payload).encode()
    headers = [(b"content-length", b"%d" % len(data)), *extra]
    if payload is not None:
        headers.append((b"content-type", b"application/json"))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge startup and shutdown; the app holds nothing to open or close."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
