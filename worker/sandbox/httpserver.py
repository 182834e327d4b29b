"""A threaded stdlib HTTP server that runs in the foreground or in a background thread.

The sandbox is this plus a request handler; it listens on 127.0.0.1 unless told otherwise.
The collector, which faces the network, runs on uvicorn instead (`worker.collector.server`):
this server has a thread per connection and no timeouts.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 drops connections under a burst of clients


class BackgroundHTTPServer:
    """``with Server(...) as s: s.url`` serves in a daemon thread; ``serve_forever()`` in this one."""

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler], **attrs: Any) -> None:
        # Each server gets its own handler subclass carrying its state as class attributes.
        self.server = _Server((host, port), type(handler.__name__, (handler,), attrs))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        assert isinstance(host, str)  # an IPv4 or IPv6 server: bytes are for other families
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        self.server.serve_forever(poll_interval=0.2)

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self.serve_forever, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
