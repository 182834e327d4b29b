"""Serving the collector: uvicorn (h11) with deadlines and caps a public endpoint needs.

uvicorn alone never times out a connection that sends nothing (its keep-alive timer starts
only after a response), and its ``limit_concurrency`` counts open connections together with
requests, so thousands of idle sockets would turn every real request into a 503. So:

- `CollectorProtocol` (uvicorn's h11 protocol, subclassed) closes a connection that has not
  sent a complete request head within `HEAD_TIMEOUT_S`, on a new connection and between
  keep-alive requests alike (a byte every second does not keep it open), and refuses
  connections past `MAX_CONNECTIONS` per process by closing them at once;
- idle keep-alive connections close after `KEEP_ALIVE_S`;
- requests in progress are capped separately, in the app (`worker.collector.app.MAX_IN_PROGRESS`),
  and a slow body has `worker.collector.app.BODY_TIMEOUT_S`;
- h11 (0.16 or later) reads ``Transfer-Encoding: chunked`` bodies and refuses ambiguous
  framing (both ``Content-Length`` and chunked, bad chunk sizes) with 400, so a proxy in
  front and this server agree where each request ends.

`run_worker` serves in one of the processes `worker.collector.supervisor` forks (``collect
--workers N``); `BackgroundServer` runs it in a thread of this process, for tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
import time
from typing import Any, NoReturn

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("attentive_relay.collector")
HEAD_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5.0
MAX_CONNECTIONS = 10_000
"""Open connections one process holds; each idle one costs a few KB until its deadline."""
DEFAULT_WORKERS = 2


class CollectorProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head and a connection cap.

    Subclass it to change ``head_timeout_s`` or ``max_connections`` (class attributes, so
    the class can be named in a config that worker processes import).
    """

    head_timeout_s: float = HEAD_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            # closing at once costs less than answering, and tells a flood nothing
            transport.close()
            return
        self._arm_head_deadline()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request head arrived
            self._cancel_head_deadline()

    def on_response_complete(self) -> None:
        # armed before uvicorn looks at pipelined data, which may already hold the next head
        if not self.transport.is_closing():
            self._arm_head_deadline()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_deadline = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def _options(http: type[CollectorProtocol]) -> dict[str, Any]:
    return {
        "http": http,
        "lifespan": "on",
        "timeout_keep_alive": KEEP_ALIVE_S,
        "access_log": False,  # request lines carry nothing useful and invite personal data
        "log_config": None,  # our own logging (worker.ops.logs), JSON off a terminal
        "server_header": False,
        "backlog": 2048,
    }


def run_worker(sock: socket.socket) -> None:
    """Serve ``worker.collector.app.create_app`` on the listening ``sock`` until SIGTERM/SIGINT.

    Runs in each process `worker.collector.supervisor` forks. The settings are read from
    the environment; a bad one raises `ConfigurationError` (``collect`` checks them first).
    """
    from worker.collector.app import create_app

    config = uvicorn.Config(create_app(), **_options(CollectorProtocol))
    uvicorn.Server(config).run(sockets=[sock])


def exec_serve(host: str, port: int, workers: int = DEFAULT_WORKERS) -> NoReturn:
    """Replace this process with ``python -m worker.collector.supervisor HOST PORT WORKERS``.

    The supervisor holds only the standard library (see its module). The process id stays
    the same, so a container's signals reach the supervisor.
    """
    argv = [sys.executable, "-m", "worker.collector.supervisor", host, str(port), str(workers)]
    os.execv(sys.executable, argv)  # noqa: S606 - a fixed argv, no shell


class BackgroundServer:
    """One uvicorn server for ``app`` in a daemon thread of this process (tests, the bench).

    ``port=0`` picks a free port (see `url`). ``head_timeout_s`` and ``max_connections``
    override `CollectorProtocol`'s for this server only.
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        protocol = type(
            "CollectorProtocol",
            (CollectorProtocol,),
            {"head_timeout_s": head_timeout_s, "max_connections": max_connections},
        )
        self.socket = socket.create_server((host, port), backlog=2048)
        self.server = uvicorn.Server(uvicorn.Config(app, **_options(protocol)))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; raises ``RuntimeError`` if the server is not up within ``timeout``."""
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="collector", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the collector did not start")
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, close open connections and wait (at most ``timeout``) for the thread."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.socket.close()
