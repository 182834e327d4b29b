"""Leases held while a worker process has a job: the fence that keeps a send single.

A claim (`worker.jobstore`) gives the worker a lease of ``ATTENTIVE_LEASE_S``. If the lease
ends, the promoter takes the job over: a new ticket, queued again. A send that left after
that would be a second delivery, and for purchases, add-to-cart and product views (no
``externalEventId`` at Attentive) a double-counted order. So:

- `Leases.fence` is called right before each request leaves. Unless the lease this process
  last set outlasts the request's deadline (``ATTENTIVE_TIMEOUT_S``,
  `worker.destinations.transport`) with a margin, it renews the lease, only if the job still
  carries this attempt's ticket and is ``running``; otherwise the attempt does not send. The
  request then has a whole lease to finish.
- While the process is alive it renews, every third of a lease, the lease of every job it
  holds (claimed, not yet recorded): an attempt waiting its turn behind a slow API is not
  taken over. Only a dead or frozen process loses its leases.
- Erasure (`producers.store.erasure`) deletes jobs that may be held here. The same thread reads the
  erasure epoch every `EPOCH_POLL_S` while the process holds any job (an idle one makes no
  round trips); when it changed, it renews every held lease at once,
  which forgets the erased jobs. The fence skips its round trip only while that check is at
  most `EPOCH_FRESH_S` old, so once ``erase`` has waited `producers.store.erasure.FENCE_WAIT_S`
  no attempt of an erased job leaves.

What a crash can still double: a process that dies after a request left but before its
outcome was recorded loses that job's lease; the job is sent again. Kinds with an
``externalEventId`` (custom events; Yotpo's ``event_id``) are the same event to the
destination; purchases, add-to-cart and product views are counted twice; attributes and
identity calls are idempotent.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis

from producers.store import keys, lua

log = logging.getLogger("attentive_relay.lease")

# KEYS: leases   ARGV: expiry ms, key prefix, then job_id, ticket pairs
_RENEW = lua.script("worker", "lease_renew")

#: Leases renewed in one script, at most: keeps each script short at any backlog.
RENEW_CHUNK = 500
#: How often a process holding jobs reads the erasure epoch.
EPOCH_POLL_S = 0.5
#: The fence trusts its local lease only if the epoch was checked at most this long ago
#: (`producers.store.erasure.FENCE_WAIT_S` is longer, with room for a request to start).
EPOCH_FRESH_S = 1.5


class Leases:
    """The leases one worker process holds. Thread-safe."""

    def __init__(self, client: redis.Redis, lease_ms: int) -> None:
        self.lease_ms = lease_ms
        self._client = client
        self._epoch: bytes | str | None = None
        self._checked = float("-inf")  # time.monotonic() of the last read of a current epoch
        self._held: dict[str, str] = {}  # job id -> ticket
        self._expires: dict[str, int] = {}  # job id -> when its lease ends, as last set here
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def hold(self, job_id: str, ticket: str, expires_ms: int) -> None:
        """Keep renewing this job's lease (which ends at ``expires_ms``) until `let_go`."""
        with self._lock:
            self._held[job_id] = ticket
            self._expires[job_id] = expires_ms
        self._keep_renewing()

    def let_go(self, job_id: str) -> None:
        with self._lock:
            self._held.pop(job_id, None)
            self._expires.pop(job_id, None)

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def fence(self, job_id: str, ticket: str, now_ms: int, need_ms: int) -> bool:
        """Whether this attempt may send now: True when its lease is held for at least
        ``need_ms`` more (the request's deadline and a margin). A lease that this process set
        and that ends later than that needs no round trip: no other worker can take the job
        before it ends. Otherwise the lease is renewed, only if the job still carries this
        attempt's ticket and is ``running``; False means it was taken over (or ended) and
        this attempt must not send (or the job was erased)."""
        with self._lock:
            if (
                self._held.get(job_id) == ticket
                and self._expires.get(job_id, 0) - now_ms >= need_ms
                and time.monotonic() - self._checked <= EPOCH_FRESH_S
            ):
                return True
        args: list[int | str] = [now_ms + self.lease_ms, keys.PREFIX, job_id, ticket]
        held = bool(_RENEW(self._client, keys=[keys.LEASES], args=args)[0])
        with self._lock:
            if held and job_id in self._held:
                self._expires[job_id] = now_ms + self.lease_ms
        return held

    def renew(self, pairs: list[tuple[str, str]], now_ms: int) -> list[bool]:
        """Renew each (job_id, ticket) still held: whether it was."""
        out: list[bool] = []
        for start in range(0, len(pairs), RENEW_CHUNK):
            args: list[Any] = [now_ms + self.lease_ms, keys.PREFIX]
            for job_id, ticket in pairs[start : start + RENEW_CHUNK]:
                args += [job_id, ticket]
            out += [bool(flag) for flag in _RENEW(self._client, keys=[keys.LEASES], args=args)]
        return out

    def renew_held(self, now_ms: int) -> int:
        """Renew every lease this process holds; forget those it no longer does. Returns how
        many it still holds."""
        with self._lock:
            pairs = list(self._held.items())
        renewed = self.renew(pairs, now_ms)
        with self._lock:
            for (job_id, _), kept in zip(pairs, renewed, strict=True):
                if not kept:
                    self._held.pop(job_id, None)
                    self._expires.pop(job_id, None)
                elif job_id in self._held:
                    self._expires[job_id] = now_ms + self.lease_ms
        return sum(renewed)

    def _keep_renewing(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="attentive-leases", daemon=True)
                    self._thread.start()

    def check_epoch(self) -> None:
        """Read the erasure epoch; if it changed, renew every held lease now (forgetting the
        erased jobs) before the fence may trust its local leases again."""
        started = time.monotonic()
        epoch = self._client.get(keys.ERASURE_EPOCH)
        if epoch != self._epoch:
            self.renew_held(int(time.time() * 1000))
            self._epoch = epoch
        self._checked = started

    def _run(self) -> None:
        every_s = self.lease_ms / 3000
        next_renewal = time.monotonic() + every_s
        failing = False
        while True:
            if not self.held():
                # Nothing to fence: no round trips. The fence of the next job held does its
                # own until this thread has read the epoch again.
                next_renewal = time.monotonic() + every_s
                if self._stop.wait(EPOCH_POLL_S):
                    return
                continue
            try:
                self.check_epoch()
                if time.monotonic() >= next_renewal:
                    self.renew_held(int(time.time() * 1000))
                    next_renewal = time.monotonic() + every_s
                failing = False
            except redis.RedisError as exc:
                # The next pass tries again; a lease that ends meanwhile only means the fence
                # stops the send and the job goes again. Said once per outage, not per pass.
                if not failing:
                    log.warning("cannot renew leases (%s)", type(exc).__name__)
                failing = True
            if self._stop.wait(EPOCH_POLL_S):
                return

    def stop(self) -> None:
        self._stop.set()
