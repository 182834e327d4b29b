"""The collector served from a thread of this process, for tests and the bench.

Production runs `worker.collector.supervisor`, which forks processes serving
`worker.collector.app.create_app` (`worker.collector.server.run_worker`).
"""

from __future__ import annotations

from typing import Any, Self

from producers.producer import Producer
from worker.collector.app import CollectorApp
from worker.collector.server import BackgroundServer


class Collector:
    """``with Collector(producer, host="127.0.0.1", port=0) as c: c.url`` serves in a thread.

    Raises ``ValueError`` when ``COLLECTOR_WRITE_KEYS`` is empty. Keyword arguments go to
    `CollectorApp` (limits) and `worker.collector.server.BackgroundServer` (timeouts, caps).
    """

    def __init__(self, producer: Producer, host: str = "127.0.0.1", port: int = 8788, **options: Any) -> None:
        app_options = {k: options.pop(k) for k in ("max_in_progress", "body_timeout_s", "limiter") if k in options}
        self.app = CollectorApp(producer, **app_options)
        self.server = BackgroundServer(self.app, host, port, **options)

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> Self:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
