"""Sender threads shared fairly between lanes, so one slow or backlogged brand never holds
up another.

A *lane* is where a job is sent: one account's credential at one endpoint (the rate-limit
`Bucket`'s key). Every lane has its own queue of attempts waiting for a thread; the threads
(at most ``threads`` per process, started as work arrives) take from the lanes in turn, and
no lane may run more than its share at once::

    share = threads // (lanes with work + 1)

The ``+ 1`` keeps a share free for a lane that has none yet: brand B's first job finds a
thread at once even while brand A's 6-second API holds every thread A may use. This is the
idea of RudderStack's per-destination workers and Segment Centrifuge's per-endpoint
isolation, inside one worker process.

`Lanes.admit` is the back pressure: it says how many more attempts a lane can take now so
that each starts within ``budget_s`` at the lane's current pace (the time an attempt holds
a thread, an average of the last ones, or the age of the oldest running one if that is
longer: a stalled API shows at once). What it does not admit, the caller parks in the job
store until `Lanes.turn_s` says the lane will have room, so a process never hoards a backlog
that other workers could be sending.

Failure contract: a submitted function's exception is set on its future; the thread lives on.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

#: The pace assumed for a lane before any attempt in it has ended.
FIRST_PACE_S = 0.5
#: How much one finished attempt moves a lane's average pace.
PACE_WEIGHT = 0.2
#: At most this many thread-fulls of attempts are admitted to a lane, however fast it is.
MAX_FILLS = 8


@dataclass
class _Lane:
    waiting: deque[tuple[Callable[[], Any], Future[Any], Any]] = field(default_factory=deque)
    running: dict[int, float] = field(default_factory=dict)  # thread id -> when it started
    pace_s: float = FIRST_PACE_S
    seen: bool = False


class Lanes:
    """Runs functions on sender threads, fairly across lanes. Thread-safe."""

    def __init__(
        self,
        threads: int,
        budget_s: float,
        name: str = "attentive-send",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threads = threads
        self.budget_s = budget_s
        self._name = name
        self._clock = clock
        self._cond = threading.Condition()
        self._lanes: dict[str, _Lane] = {}
        self._turns: deque[str] = deque()  # lanes with waiting work, in the order they are served
        self._started = 0
        self._idle = 0
        self._closed = False

    def submit(self, lane: str, fn: Callable[[], Any], tag: Any = None) -> Future[Any]:
        """Queue ``fn`` in ``lane``; it runs on a sender thread when the lane's turn comes.
        ``tag`` is handed back by `close` if ``fn`` never started."""
        future: Future[Any] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the sender threads are stopping")
            state = self._lanes.setdefault(lane, _Lane())
            if not state.waiting:
                self._turns.append(lane)
            state.waiting.append((fn, future, tag))
            if self._idle == 0 and self._started < self.threads:
                self._start_thread()
            else:
                self._cond.notify()
        return future

    def share(self) -> int:
        """How many threads one lane may use at once now."""
        with self._cond:
            return self._share()

    def _share(self, joining: int = 0) -> int:
        busy = sum(1 for s in self._lanes.values() if s.waiting or s.running) + joining
        return max(1, self.threads // (busy + 1))

    def pace_s(self, lane: str) -> float:
        """Seconds an attempt in ``lane`` holds a thread, as now estimated."""
        with self._cond:
            return self._pace(self._lanes.get(lane) or _Lane())

    def _pace(self, state: _Lane) -> float:
        now = self._clock()
        oldest = max((now - t for t in state.running.values()), default=0.0)
        return max(state.pace_s, oldest, 0.001)

    def admit(self, lane: str, count: int) -> int:
        """How many of ``count`` new attempts ``lane`` can take so that each starts within
        ``budget_s``; the caller parks the rest (see `turn_s`). At least one thread-full is
        always admitted to an idle lane."""
        with self._cond:
            state = self._lanes.get(lane) or _Lane()
            share = self._share(joining=0 if (state.waiting or state.running) else 1)
            fills = min(MAX_FILLS, max(1.0, self.budget_s / self._pace(state)))
            room = int(share * fills) - len(state.waiting) - len(state.running)
            return max(0, min(count, room))

    def turn_s(self, lane: str, behind: int) -> float:
        """Seconds until ``lane`` will have room for an attempt that has ``behind`` others
        parked before it: the time its threads take to work through them at the current pace."""
        with self._cond:
            state = self._lanes.get(lane) or _Lane()
            return (behind + 1) * self._pace(state) / max(1, self._share())

    def load(self) -> dict[str, tuple[int, int]]:
        """(waiting, running) per lane with work, for stats and tests."""
        with self._cond:
            return {name: (len(s.waiting), len(s.running)) for name, s in self._lanes.items() if s.waiting or s.running}

    def close(self, timeout_s: float) -> list[Any]:
        """Stop taking work; wait up to ``timeout_s`` for running attempts. Returns the tags of
        the functions that never started (their futures cancelled), so the caller can hand
        their jobs back."""
        deadline = self._clock() + timeout_s
        with self._cond:
            self._closed = True
            dropped = [(future, tag) for s in self._lanes.values() for _, future, tag in s.waiting]
            for s in self._lanes.values():
                s.waiting.clear()
            self._turns.clear()
            self._cond.notify_all()
            while any(s.running for s in self._lanes.values()) and self._clock() < deadline:
                self._cond.wait(max(0.01, deadline - self._clock()))
        for future, _ in dropped:
            future.cancel()
        return [tag for _, tag in dropped]

    def _start_thread(self) -> None:
        self._started += 1
        threading.Thread(target=self._serve, name=f"{self._name}-{self._started}", daemon=True).start()

    def _next(self) -> tuple[str, Callable[[], Any], Future[Any]] | None:
        """The next attempt to run: from the first lane in turn that is under its share."""
        share = self._share()
        for _ in range(len(self._turns)):
            lane = self._turns.popleft()
            state = self._lanes[lane]
            if not state.waiting:
                continue
            if len(state.running) >= share:
                self._turns.append(lane)
                continue
            fn, future, _ = state.waiting.popleft()
            if state.waiting:
                self._turns.append(lane)
            return lane, fn, future
        return None

    def _serve(self) -> None:
        me = threading.get_ident()
        while True:
            with self._cond:
                self._idle += 1
                while (work := None if self._closed else self._next()) is None:
                    if self._closed:
                        self._idle -= 1
                        self._started -= 1
                        return
                    self._cond.wait()
                self._idle -= 1
                lane, fn, future = work
                state = self._lanes[lane]
                started = self._clock()
                state.running[me] = started
                if state.waiting and self._idle == 0 and self._started < self.threads:
                    self._start_thread()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # a thread must outlive any one attempt
                    future.set_exception(exc)
            with self._cond:
                del state.running[me]
                took = self._clock() - started
                state.pace_s = took if not state.seen else (1 - PACE_WEIGHT) * state.pace_s + PACE_WEIGHT * took
                state.seen = True
                self._cond.notify_all()
