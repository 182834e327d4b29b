"""Redis replies as the relay reads them.

Every client the relay opens leaves ``decode_responses`` off, so a reply is ``bytes``;
redis-py's type hints allow ``str`` as well (a client may decode). These turn a reply into the
one type the caller wants, accepting both, so the code is right whichever a client returns.
"""

from __future__ import annotations


def text(reply: bytes | str) -> str:
    """A string reply as text (UTF-8, as the relay writes every Redis value)."""
    return reply.decode() if isinstance(reply, bytes) else reply


def raw(reply: bytes | str) -> bytes:
    """A string reply as bytes."""
    return reply if isinstance(reply, bytes) else reply.encode()
