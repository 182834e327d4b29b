"""Sending capacity shared fairly between lanes, so one slow or backlogged brand never holds
up another.

A *lane* is where a job is sent: one account's credential at one endpoint (the rate-limit
`Bucket`'s key). Work comes in groups (the jobs of one message for one lane, sent together);
every lane has its own queue of groups waiting for a thread. The threads (started as work
arrives) take from the lanes in turn, and no lane may have more than its share of jobs under
way at once (a group may start alone in its lane even if larger)::

    share = threads // (lanes with work + 1)

The ``+ 1`` keeps a share free for a lane that has none yet: brand B's first job starts at
once even while brand A's 6-second API holds all that A may use. This is the
idea of RudderStack's per-destination workers and Segment Centrifuge's per-endpoint
isolation, inside one worker process.

`Lanes.admit` is the back pressure: it says how many more attempts a lane can take now so
that each starts within ``budget_s`` at the lane's current pace (the time an attempt holds
a thread, an average of the last ones, or the age of the oldest running one if that is
longer: a stalled API shows at once), waiting a while for room if asked to. What it does not
admit, the caller parks in the job store until `Lanes.turn_s` says the lane will have room,
so a process never hoards a backlog that other workers could be sending.

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
    waiting: deque[tuple[Callable[[], Any], Future[Any], Any, int]] = field(default_factory=deque)
    running: dict[int, tuple[float, int]] = field(default_factory=dict)  # thread id -> (started, jobs)
    pace_s: float = FIRST_PACE_S
    seen: bool = False
    waiting_jobs: int = 0
    running_jobs: int = 0
    wanting_room: int = 0  # `admit` calls waiting for room in this lane
    released: int = 0  # jobs of running groups that ended early (`Lanes.release`)


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
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # sender threads wait here for work
        self._roomy = threading.Condition(lock)  # `admit` and `close` wait here
        self._lanes: dict[str, _Lane] = {}
        self._turns: deque[str] = deque()  # lanes with waiting work, in the order they are served
        self._started = 0
        self._idle = 0
        self._closed = False

    def submit(self, lane: str, fn: Callable[[], Any], tag: Any = None, jobs: int = 1) -> Future[Any]:
        """Queue ``fn``, which attempts ``jobs`` jobs at once, in ``lane``; it runs on a sender
        thread when the lane's turn comes. ``tag`` is handed back by `close` if ``fn`` never
        started."""
        future: Future[Any] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the sender threads are stopping")
            state = self._lanes.setdefault(lane, _Lane())
            if not state.waiting:
                self._turns.append(lane)
            state.waiting.append((fn, future, tag, jobs))
            state.waiting_jobs += jobs
            if self._idle == 0 and self._started < self.threads:
                self._start_thread()
            else:
                self._cond.notify()
        return future

    def release(self, lane: str, jobs: int = 1) -> None:
        """``jobs`` of a running group in ``lane`` are done before the group: their room is
        free now (a group waits for its slowest send, and its fast ones should not hold the
        lane's share meanwhile)."""
        with self._cond:
            state = self._lanes.get(lane)
            if state is None or state.running_jobs < jobs:
                return
            state.running_jobs -= jobs
            state.released += jobs
            # Wake a thread only for what this room lets start now: a wake that finds nothing
            # to do costs two thread switches, and at full pace that was one per send.
            if state.waiting and (not state.running_jobs or state.running_jobs + state.waiting[0][3] <= self._share()):
                self._cond.notify()
            if state.wanting_room and self._room(lane) > 0:
                self._roomy.notify_all()

    def share(self) -> int:
        """How many jobs one lane may have under way at once now."""
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
        oldest = max((now - t for t, _ in state.running.values()), default=0.0)
        return max(state.pace_s, oldest, 0.001)

    def admit(self, lane: str, count: int, wait_s: float = 0.0) -> int:
        """How many of ``count`` new attempts ``lane`` can take so that each starts within
        ``budget_s``; the caller parks the rest (see `turn_s`). At least one thread-full is
        always admitted to an idle lane. With ``wait_s``, waits up to that long for room
        when there is none."""
        deadline = self._clock() + wait_s
        with self._cond:
            state = self._lanes.setdefault(lane, _Lane())
            while True:
                room = self._room(lane)
                if room > 0 or self._closed or self._clock() >= deadline:
                    return max(0, min(count, room))
                state.wanting_room += 1
                try:
                    self._roomy.wait(min(1.0, max(0.01, deadline - self._clock())))
                finally:
                    state.wanting_room -= 1

    def _room(self, lane: str) -> int:
        state = self._lanes.get(lane) or _Lane()
        share = self._share(joining=0 if (state.waiting or state.running) else 1)
        fills = min(MAX_FILLS, max(1.0, self.budget_s / self._pace(state)))
        return int(share * fills) - state.waiting_jobs - state.running_jobs

    def turn_s(self, lane: str, behind: int) -> float:
        """Seconds until ``lane`` will have room for an attempt that has ``behind`` others
        parked before it: the time its threads take to work through them at the current pace."""
        with self._cond:
            state = self._lanes.get(lane) or _Lane()
            return (behind + 1) * self._pace(state) / max(1, self._share())

    def load(self) -> dict[str, tuple[int, int]]:
        """(waiting, running) per lane with work, for stats and tests."""
        with self._cond:
            return {name: (s.waiting_jobs, s.running_jobs) for name, s in self._lanes.items() if s.waiting or s.running}

    def close(self, timeout_s: float) -> list[Any]:
        """Stop taking work; wait up to ``timeout_s`` for running attempts. Returns the tags of
        the functions that never started (their futures cancelled), so the caller can hand
        their jobs back."""
        deadline = self._clock() + timeout_s
        with self._cond:
            self._closed = True
            dropped = [(future, tag) for s in self._lanes.values() for _, future, tag, _ in s.waiting]
            for s in self._lanes.values():
                s.waiting.clear()
                s.waiting_jobs = 0
            self._turns.clear()
            self._cond.notify_all()
            self._roomy.notify_all()
            while any(s.running for s in self._lanes.values()) and self._clock() < deadline:
                self._roomy.wait(max(0.01, deadline - self._clock()))
        for future, _ in dropped:
            future.cancel()
        return [tag for _, tag in dropped]

    def _start_thread(self) -> None:
        self._started += 1
        threading.Thread(target=self._serve, name=f"{self._name}-{self._started}", daemon=True).start()

    def _next(self) -> tuple[str, Callable[[], Any], Future[Any], int] | None:
        """The next work to run: from the first lane in turn that stays within its share."""
        share = self._share()
        for _ in range(len(self._turns)):
            lane = self._turns.popleft()
            state = self._lanes[lane]
            if not state.waiting:
                continue
            if state.running_jobs and state.running_jobs + state.waiting[0][3] > share:
                self._turns.append(lane)
                continue
            fn, future, _, jobs = state.waiting.popleft()
            state.waiting_jobs -= jobs
            if state.waiting:
                self._turns.append(lane)
            return lane, fn, future, jobs
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
                lane, fn, future, jobs = work
                state = self._lanes[lane]
                started = self._clock()
                state.running[me] = (started, jobs)
                state.running_jobs += jobs
                if state.waiting and self._idle == 0 and self._started < self.threads:
                    self._start_thread()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # a thread must outlive any one attempt
                    future.set_exception(exc)
            with self._cond:
                del state.running[me]
                early = min(state.released, jobs)
                state.released -= early
                state.running_jobs -= jobs - early
                took = self._clock() - started
                state.pace_s = took if not state.seen else (1 - PACE_WEIGHT) * state.pace_s + PACE_WEIGHT * took
                state.seen = True
                # The finishing thread takes the next work itself; others are woken only when
                # a lane fell idle, which raises every other lane's share (waking all idle
                # threads after every attempt cost more CPU than the sends).
                if not state.running and not state.waiting:
                    self._cond.notify_all()
                # Only a wait for room in this lane (or `close`) can use what just ended.
                if (state.wanting_room and self._room(lane) > 0) or self._closed:
                    self._roomy.notify_all()
