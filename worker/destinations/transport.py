"""How destinations speak HTTP: httpx's request and response types over a lean transport.

`httpx.Client` cost about half of a delivery's worker CPU here (URL merging, cookie, auth and
redirect hooks for every call, and httpcore's pool, whose request assignment walks every
connection). A delivery needs none of that: `Http` builds an `httpx.Request` and hands it
straight to a transport. The default, `StdlibTransport`, sends it with the standard library's
``http.client`` over one persistent connection per sender thread and host. Any other
``httpx.BaseTransport`` can be injected instead (tests pass ``httpx.MockTransport``), so the
destinations build the same requests and read the same responses either way.

Behaviour kept from the httpx client it replaces: the timeout (``ATTENTIVE_TIMEOUT_S``)
bounds the connect and the TLS handshake, and the deadline below every send and receive;
redirects are not followed; TLS certificates are
verified (the default SSL context). Failures raise httpx's exceptions: `httpx.ConnectTimeout`
or `httpx.ReadTimeout` for a timeout, `httpx.ConnectError` when no connection could be made (TLS refused included),
`httpx.RemoteProtocolError` for a connection that broke mid-exchange, and `LateToLeave` (an
`httpx.TransportError` too) for a request that did not leave because its send slot passed
(`LEAVE_BY`); nothing else.

Unlike httpx, the timeout is also a deadline for the whole exchange: a server that trickles
its answer a byte at a time is cut off ``ATTENTIVE_TIMEOUT_S`` after the request started
(`httpx.ReadTimeout`). The lease that fences a send (`worker.lease`) is renewed when the
request starts and outlasts this deadline, so no attempt is still sending when another could
take the job over, whatever the pool (prefork's time limit or threads).
"""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import ssl
import threading
import time
from contextvars import ContextVar
from typing import Any

import httpx

MAX_RESPONSE = 1024 * 1024
"""Bytes of a response body read; the rest is dropped with the connection."""

LEAVE_BY: ContextVar[float | None] = ContextVar("attentive_leave_by", default=None)
"""The latest ``time.time()`` at which this thread's request may still leave, or None. The
delivery sets it for a send in a crowded rate bucket (`worker.delivery`): a request that would
leave later than its slot allows is not sent (`LateToLeave`), since a busy process can hold
a thread up anywhere between its last check and the first byte."""


class LateToLeave(httpx.TransportError):
    """Nothing was sent: the request was about to leave after `LEAVE_BY`."""


class StdlibTransport(httpx.BaseTransport):
    """``http.client`` connections kept per thread and (scheme, host, port). Thread-safe."""

    def __init__(self, timeout_s: float, ssl_context: ssl.SSLContext | None = None) -> None:
        self.timeout_s = timeout_s
        self.ssl_context = ssl_context or ssl.create_default_context()
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._deadlines = _Deadlines()

    def _connection(self, url: httpx.URL) -> http.client.HTTPConnection:
        conns: dict[tuple[str, str, int | None], http.client.HTTPConnection] = self._local.__dict__.setdefault(
            "conns", {}
        )
        key = (url.scheme, url.host, url.port)
        conn = conns.get(key)
        if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
            conn.close()  # the server ended an idle keep-alive connection: reconnect, never resend
        if conn is None:
            if url.scheme == "https":
                conn = _HTTPSConnection(url.host, url.port, timeout=self.timeout_s, context=self.ssl_context)
            else:
                conn = _HTTPConnection(url.host, url.port, timeout=self.timeout_s)
            conns[key] = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        conn = self._connection(request.url)
        connected = conn.sock is not None
        target = request.url.raw_path.decode("ascii")
        leave_by = LEAVE_BY.get()
        if leave_by is not None and time.time() > leave_by:
            raise LateToLeave("its send slot passed before it could leave", request=request)
        watch = self._deadlines.watch(conn, self.timeout_s)
        try:
            conn.request(request.method, target, body=request.read(), headers=dict(request.headers.multi_items()))
            answer = conn.getresponse()
            content = answer.read(MAX_RESPONSE)
            if answer.will_close or not answer.isclosed():
                conn.close()  # the server closes it, or a body too large was cut short
            if self._deadlines.passed(watch):
                # http.client returns a body cut short by the shutdown as if it were whole.
                raise TimeoutError("deadline")
        except TimeoutError as exc:
            # A socket exists once the connection was made: the time ran out sending or waiting.
            sent = connected or conn.sock is not None or self._deadlines.passed(watch)
            kind = httpx.ReadTimeout if sent else httpx.ConnectTimeout
            conn.close()
            raise kind(f"timed out ({type(exc).__name__})", request=request) from None
        except (ConnectionRefusedError, socket.gaierror, ssl.SSLError) as exc:
            conn.close()
            raise httpx.ConnectError(f"cannot connect ({type(exc).__name__})", request=request) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            if self._deadlines.passed(watch):
                raise httpx.ReadTimeout(f"deadline passed ({type(exc).__name__})", request=request) from None
            raise httpx.RemoteProtocolError(f"connection broke ({type(exc).__name__})", request=request) from None
        finally:
            self._deadlines.unwatch(watch)
        return httpx.Response(answer.status, headers=answer.getheaders(), content=content, request=request)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


class _Deadlines:
    """Cuts off exchanges that outlast their deadline: one daemon thread shuts their sockets
    down, which ends the blocked read at once."""

    TICK_S = 0.05

    def __init__(self) -> None:
        self._active: dict[int, tuple[float, http.client.HTTPConnection]] = {}
        self._passed: set[int] = set()
        self._lock = threading.Lock()
        self._next = 0
        self._thread: threading.Thread | None = None

    def watch(self, conn: http.client.HTTPConnection, seconds: float) -> int:
        with self._lock:
            self._next += 1
            self._active[self._next] = (time.monotonic() + seconds, conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="attentive-deadlines", daemon=True)
                self._thread.start()
            return self._next

    def unwatch(self, watch: int) -> None:
        with self._lock:
            self._active.pop(watch, None)
            self._passed.discard(watch)

    def passed(self, watch: int) -> bool:
        with self._lock:
            return watch in self._passed

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK_S)
            now = time.monotonic()
            # Under the lock: once `unwatch` has run, the connection may carry the next
            # exchange, which must not be cut.
            with self._lock:
                for w, (deadline, conn) in list(self._active.items()):
                    if deadline > now:
                        continue
                    del self._active[w]
                    self._passed.add(w)
                    if conn.sock is not None:
                        with contextlib.suppress(OSError):
                            conn.sock.shutdown(socket.SHUT_RDWR)


class _HTTPConnection(http.client.HTTPConnection):
    """Connects (and shakes hands) within the timeout, then blocks without one: the deadline
    (`_Deadlines`) already ends an exchange that runs late, and a socket timeout makes every
    send and receive two system calls (a poll first), each a hand-over of the GIL that a busy
    sender process pays for in thread switches."""

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(None)


class _HTTPSConnection(http.client.HTTPSConnection):
    __doc__ = _HTTPConnection.__doc__

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(None)


def _closed_by_peer(sock: socket.socket) -> bool:
    # An idle keep-alive connection is readable only if the server closed it (or broke protocol).
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class Http:
    """A base URL, default headers and a transport: ``post`` and ``get`` return a read
    `httpx.Response` or raise httpx's transport errors. Thread-safe."""

    def __init__(
        self, base_url: str, headers: dict[str, str], timeout_s: float, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = headers
        self.transport = transport or StdlibTransport(timeout_s)
        self._timeout = httpx.Timeout(timeout_s).as_dict()

    def request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Response:
        request = httpx.Request(
            method,
            httpx.URL(self.base_url + path, params=params),
            headers={**self.headers, **headers} if headers else self.headers,
            content=content,
            extensions={"timeout": self._timeout},
        )
        response = self.transport.handle_request(request)
        response.read()
        return response

    def post(self, path: str, *, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.request("POST", path, content=content, headers=headers)

    def get(
        self, path: str, *, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return self.request("GET", path, params=params, headers=headers)

    def close(self) -> None:
        self.transport.close()
