"""The promoter: moves due retries back onto the queue and reclaims deliveries whose worker died.

Retries never wait inside the broker. Celery's ETA/countdown messages on Redis are held in
worker memory and, once older than the visibility timeout, restored and run again (kombu
issue 337). Here a retry is a member of a sorted set scored by its due time; every worker
runs a `Promoter` thread that, about once a second, atomically moves due members back onto
the queue with a new ticket (`JobStore.promote`). Many promoters can run at once: the Lua
script makes each move happen exactly once, so a retry survives any worker crash and runs once.

The same pass reclaims expired leases: a job whose delivery started but neither finished nor
renewed within ``ATTENTIVE_LEASE_S`` is queued again (its attempt counts), so a worker killed
outright costs a lease period, not kombu's visibility timeout.

About once a second (one promoter at a time, across all workers) it also reconciles: a job
that has said ``queued`` for longer than ``ATTENTIVE_ORPHAN_S`` and whose broker message is
gone is queued again (`JobStore.reconcile`). That is the only recovery for a message a worker
took from Redis and died before claiming: the relay does not rely on kombu's unacked restore.
The same pass finds identity jobs that vanished without ending and releases their waiters.

Every pass also queues waiters of identity jobs that ended or vanished, a chunk per script
for up to `worker.jobstore.RELEASE_BUDGET_S` (`JobStore.release_waiters`): the script that
records an identity job's end queues only the first few, so it stays short however many wait.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from worker.jobstore import JobStore

log = logging.getLogger("attentive_relay.schedule")


class Promoter:
    """Runs `JobStore.promote` every ``interval_s``, and `JobStore.reconcile` every
    ``reconcile_s``, in a daemon thread until stopped. A Redis error skips a pass, never ends
    the thread."""

    def __init__(self, store: JobStore, interval_s: float = 1.0, reconcile_s: float = 1.0) -> None:
        self.store = store
        self.interval_s = interval_s
        self.reconcile_s = reconcile_s
        self._next_reconcile = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> tuple[int, int]:
        """One pass: due retries and expired leases, the reconciliation when due, and waiters
        released by ended identity jobs. Returns (promoted, reaped). Raises
        ``redis.RedisError`` when Redis cannot be reached."""
        now = time.time()
        promoted, reaped = self.store.promote(int(now * 1000))
        if promoted or reaped:
            log.info("promoter: %d due retries queued, %d lost deliveries reclaimed", promoted, reaped)
        released = 0
        if now >= self._next_reconcile:
            self._next_reconcile = now + self.reconcile_s
            outcome = self.store.reconcile(int(now * 1000), lock_ms=int(self.reconcile_s * 1000))
            if outcome and outcome[0]:
                log.warning("promoter: %d queued jobs had lost their broker message; queued again", outcome[0])
            released = outcome[2] if outcome else 0
        released += self.store.release_waiters(int(time.time() * 1000))
        if released:
            log.info("promoter: %d jobs that waited for an identity job queued", released)
        return promoted, reaped

    def run_forever(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.run_once()
                failures = 0
            except redis.RedisError as exc:
                failures += 1
                log.warning("promoter cannot reach Redis (%s); retrying", type(exc).__name__)
            self._stop.wait(min(30.0, self.interval_s * (2 ** min(failures, 5))))

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="attentive-promoter", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
