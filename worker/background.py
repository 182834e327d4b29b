"""A daemon thread beside each worker's promoter (the privacy check, the pause probe)."""

from __future__ import annotations

import threading
from typing import Self


class Background:
    """Runs `run_forever` in a daemon thread named `thread_name` from `start` until `stop`;
    `run_forever` returns once ``self._stop`` is set."""

    thread_name = "attentive-background"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_forever(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread = threading.Thread(target=self.run_forever, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
