"""A circuit breaker per account and destination: sustained failure stops the requests.

When an account's destination keeps failing (5xx or no answer), every request adds load to a
service that is down and burns the jobs' attempts. Each worker process counts, per *lane*
(``ACCOUNT|DESTINATION``), the requests of the last ``ATTENTIVE_CIRCUIT_WINDOW_S`` (60 s) and
how many failed; when at least ``ATTENTIVE_CIRCUIT_MIN_REQUESTS`` (20) were made and more
than ``ATTENTIVE_CIRCUIT_FAILURE_SHARE`` (0.5) failed, it opens the lane's circuit for every
worker (`producers.store.keys.CIRCUIT`, with why and since when).

While a circuit is open, a worker that takes one of the lane's jobs holds it (as a pause
does, `worker.pause`: back in the schedule, its attempts kept, listed under the lane) until
the next probe. Every ``ATTENTIVE_CIRCUIT_PROBE_S`` (30 s) one job goes through as the probe
(`producers.store.keys.circuit_probe`, taken by one worker): a success closes the circuit, and a
second later, once every worker has seen it closed, the held jobs are queued in batch messages
(`worker.held`); a failure keeps it open for another probe period. Should that second's timer
never run (the worker stopped), the held jobs go when their hold ends, a probe period after
they were held.

Workers read the open circuits at most every `worker.pause.REFRESH_S`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

import redis

from producers.settings import Settings
from producers.store import keys
from worker.held import HeldRelease
from worker.pause import REFRESH_S, LaneSet

log = logging.getLogger("attentive_relay.circuit")


class Window:
    """Requests of one lane in the last ``window_s``, and whether they call for opening. Pure:
    the caller passes the time."""

    def __init__(self, window_s: float, min_requests: int, failure_share: float) -> None:
        self.window_s = window_s
        self.min_requests = min_requests
        self.failure_share = failure_share
        self._seen: deque[tuple[float, bool]] = deque()
        self._failed = 0

    def add(self, now: float, failed: bool) -> bool:
        """Count one request; True when the window now calls for the circuit to open."""
        self._seen.append((now, failed))
        self._failed += failed
        while self._seen and self._seen[0][0] <= now - self.window_s:
            _, old = self._seen.popleft()
            self._failed -= old
        total = len(self._seen)
        return total >= self.min_requests and self._failed > self.failure_share * total

    def counts(self) -> tuple[int, int]:
        return len(self._seen), self._failed

    def reset(self) -> None:
        self._seen.clear()
        self._failed = 0


class Circuits:
    """The circuits of the lanes, as one worker process sees them. Thread-safe."""

    def __init__(self, client: redis.Redis, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, Window] = {}
        self._open = LaneSet(client, keys.CIRCUIT)
        self._held = HeldRelease(client, settings.attentive_queue)

    def is_open(self, lane: str) -> bool:
        """Whether ``lane``'s circuit is open (as read at most `worker.pause.REFRESH_S` ago)."""
        return lane in self._open

    def may_probe(self, lane: str) -> bool:
        """Whether this job goes as the open circuit's probe (one per probe period, across workers)."""
        probe_ms = int(self.settings.attentive_circuit_probe_s * 1000)
        return bool(self.client.set(keys.circuit_probe(lane), 1, nx=True, px=probe_ms))

    def record(self, lane: str, failed: bool) -> str | None:
        """Count a request's outcome: ``opened`` when this opened the circuit, ``closed`` when a
        success closed an open one, else None."""
        now = self._clock()
        with self._lock:
            window = self._windows.get(lane)
            if window is None:
                s = self.settings
                window = Window(
                    s.attentive_circuit_window_s, s.attentive_circuit_min_requests, s.attentive_circuit_failure_share
                )
                self._windows[lane] = window
            trips = window.add(now, failed)
            requests, failures = window.counts()
        was_open = lane in self._open
        if not failed and was_open:
            self.close(lane, int(now * 1000))
            return "closed"
        if trips and not was_open:
            since = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            value = {"reason": "sustained_failure", "since": since, "requests": requests, "failed": failures}
            opened = bool(self.client.hsetnx(keys.CIRCUIT, lane, json.dumps(value)))
            # The first probe waits a whole probe period.
            probe_ms = int(self.settings.attentive_circuit_probe_s * 1000)
            self.client.set(keys.circuit_probe(lane), 1, nx=True, px=probe_ms)
            self._open.add(lane)
            return "opened" if opened else None
        return None

    def close(self, lane: str, now_ms: int) -> threading.Timer:
        """Close ``lane``'s circuit; its held jobs are queued once every worker has seen it
        closed (`worker.pause.REFRESH_S`; sooner, one could hold them for another probe
        period), by the timer returned (a daemon thread, already started)."""
        self.client.hdel(keys.CIRCUIT, lane)
        self.client.delete(keys.circuit_probe(lane))
        self._open.discard(lane)
        with self._lock:
            window = self._windows.get(lane)
            if window is not None:
                window.reset()
        timer = threading.Timer(REFRESH_S + 0.1, self._release, (lane,))
        timer.daemon = True
        timer.start()
        return timer

    def _release(self, lane: str) -> None:
        try:
            released = self._held.release(lane, int(self._clock() * 1000))
        except redis.RedisError as exc:
            log.warning(
                "circuit closed for %s, but its held jobs could not be queued (%s): they go when their hold ends",
                lane,
                type(exc).__name__,
            )
            return
        if released:
            log.info("circuit closed for %s: %d held jobs queued", lane, released)

    def listed(self) -> dict[str, dict[str, object]]:
        """Every open circuit with why, since when, and how many jobs it holds."""
        return self._open.listed()
