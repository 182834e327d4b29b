"""One delivery attempt from claim to outcome: the body of the Celery task.

Order of checks: claim (fencing) -> a lost previous attempt -> validate again -> freshness ->
send -> retry policy -> record the decision. Any exception in here is a poison job: it is
dead-lettered as ``crashed`` with a traceback summary (exception type and code locations,
never values), so it cannot loop. A Redis error is not the job's fault: it propagates (the
task requeues the message) and the lease recovers the attempt.

`Delivery.run` attempts one job; `Delivery.run_batch` the jobs of a batch message, with the
same steps and the Redis round trips shared (one claim, one reservation per bucket, one
pipeline of outcomes) and the sends overlapped on sender threads.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis
from pydantic import BaseModel

from producers import freshness
from producers.accounts import Account
from producers.errors import InvalidJob, RateLimited, Stale, WorkerLost
from producers.queue import MAX_BATCH, job_of
from producers.settings import Settings
from producers.validation import parse_job
from worker import sentry
from worker.destinations import Bucket, Destination, Destinations, Outcome, account_of
from worker.jobstore import Claim, JobStore
from worker.policy import DeadLetter, Decision, Delivered, Retry, RetryPolicy, decide
from worker.ratelimit import RateLimiter

T = TypeVar("T")
log = logging.getLogger("attentive_relay.delivery")
MAX_RESPONSE_KEPT = 2000
#: How late a parked job may still use the slot reserved for it; later, it takes a new one.
#: A later send would bunch up with the next slots' sends, past Attentive's count for a second
#: (at 145.5 of 150/s, 25 ms late is already three requests' worth).
LATE_SLOT_MS = 25
#: A parked job is queued again this long before its slot (the promoter runs every 0.1 s), so
#: it is back in time to wait for the slot rather than miss it.
PARK_LEAD_MS = 150
#: How far off a batch job's send slot may be for it to wait on a sender thread; further off, it
#: is parked until the slot. Longer than ATTENTIVE_RATE_MAX_WAIT_S: here the wait costs a thread, not a worker.
BATCH_WAIT_S = 1.0
#: Threads per process that run a batch's attempts: enough for a few batches at once; more
#: batches queue here, and each attempt reserves its send slot only when it starts.
SENDER_THREADS = 4 * MAX_BATCH
#: Pause for the whole bucket when Attentive reports x-ratelimit-remaining: 0 without a 429.
EXHAUSTED_SECOND_PAUSE_S = 0.1


def _iso(ms: int) -> str:
    # Always with milliseconds, so the strings sort in time order (isoformat drops a zero fraction).
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def traceback_summary(exc: BaseException) -> str:
    """Exception type and where it was raised, without its message or locals (they may hold data)."""
    frames = traceback.extract_tb(exc.__traceback__)[-6:]
    where = " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} in {f.name}" for f in reversed(frames))
    return f"{type(exc).__module__}.{type(exc).__qualname__} at {where}"


class Delivery:
    """Runs attempts. One per worker process; ``clock`` and ``rand`` are injectable for tests."""

    def __init__(
        self,
        settings: Settings,
        destinations: Destinations,
        store: JobStore,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.destinations = destinations
        self.store = store
        self.limiter = limiter
        self.policy = RetryPolicy.from_settings(settings)
        self.clock = clock
        self.rand = rand
        self.sleep = sleep
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def run(self, job_id: str, ticket: str) -> str:
        """Attempt the job if this message holds its ticket. Returns the outcome's name."""
        now_ms = int(self.clock() * 1000)
        claim = self.store.claim(job_id, ticket, now_ms)
        if isinstance(claim, str):
            return _skipped(job_id, ticket, claim)
        return self._guarded(claim, now_ms)

    def run_batch(self, batch_id: str, tickets: list[str]) -> Counter[str]:
        """Attempt every job of one batch message whose ticket it holds. Returns how many ended
        each way.

        The same steps as `run`, with the Redis work shared: the jobs are claimed in one script,
        their send slots reserved in one script per rate-limit bucket, and their outcomes
        recorded in one pipeline. The sends overlap on the sender threads (so a 100 ms API does
        not serialize them), each at its own slot; a job whose slot is further off than
        `BATCH_WAIT_S` is parked until it, as `run` parks one. A failure in one job's steps
        dead-letters that job as ``crashed`` and leaves the others alone. A Redis error is
        raised once every send has returned (the task hands the message back; the claimed jobs
        come back through their leases).
        """
        now_ms = int(self.clock() * 1000)
        pairs = [(job_of(ticket), ticket) for ticket in tickets[:MAX_BATCH]]
        counts: Counter[str] = Counter()
        ready: list[Ready] = []
        for (job_id, ticket), claim in zip(pairs, self.store.claim_many(batch_id, pairs, now_ms), strict=True):
            if isinstance(claim, str):
                counts[_skipped(job_id, ticket, claim)] += 1
                continue
            prepared = self._crash_guard(claim, now_ms, lambda c=claim: self._prepare(c, now_ms))
            if isinstance(prepared, str):
                counts[_counted(prepared)] += 1
            else:
                ready.append(prepared)
        sending = []
        for attempt, wait_s in zip(ready, self._batch_waits(ready, now_ms), strict=True):
            parked = self._crash_guard(
                attempt.claim, now_ms, lambda a=attempt, w=wait_s: self._park(a, now_ms, w, BATCH_WAIT_S)
            )
            if parked is not None:
                counts[_counted(parked)] += 1
                continue
            sending.append((attempt, self._senders().submit(self._send_at, attempt, now_ms / 1000 + wait_s)))
        failed: redis.RedisError | None = None
        sent: list[tuple[Ready, Decision, Outcome, int]] = []
        for attempt, future in sending:
            try:
                result = future.result()
                if isinstance(result, str):
                    counts[_counted(result)] += 1
                else:
                    sent.append((attempt, *result))
            except redis.RedisError as exc:
                failed = failed or exc
            except Exception as exc:
                counts[_counted(self._crashed(attempt.claim, now_ms, exc))] += 1
        if sent:
            with self.store.client.pipeline(transaction=False) as pipe:
                for attempt, decision, outcome, done_ms in sent:
                    self._record(attempt.claim, done_ms, attempt.history, decision, outcome, pipe)
                kept = pipe.execute()
            for (attempt, decision, _, _), was_kept in zip(sent, kept, strict=True):
                counts[_counted(_name(decision))] += 1
                if not was_kept:
                    _taken_over(attempt.claim, decision)
        if failed is not None:
            raise failed
        return counts

    def _batch_waits(self, ready: list[Ready], now_ms: int) -> list[float]:
        """Seconds until each job's send slot: its own reserved slot if still good, else a new
        one, reserved for all the batch's jobs of a bucket in one script."""
        waits = [0.0] * len(ready)
        if self.limiter is None:
            return waits
        needed: dict[str, list[int]] = {}
        for i, attempt in enumerate(ready):
            own = self._own_slot(attempt, now_ms)
            if own is not None:
                waits[i] = own
            else:
                needed.setdefault(self.limiter.key(attempt.bucket), []).append(i)
        for members in needed.values():
            for i, wait_s in zip(
                members, self.limiter.reserve_many(ready[members[0]].bucket, len(members)), strict=True
            ):
                waits[i] = wait_s
        return waits

    def _own_slot(self, ready: Ready, now_ms: int) -> float | None:
        """Seconds until the slot reserved for this job when it was parked, if that slot is
        still good: not more than `LATE_SLOT_MS` past, and not reserved before a 429 held the
        bucket back. Otherwise it needs a new one."""
        slot_ms = ready.claim.slot_ms
        if slot_ms is None or now_ms - slot_ms > LATE_SLOT_MS:
            return None
        if self.limiter is not None and self.limiter.held(ready.bucket, ask_redis=True):
            return None
        return max(0.0, (slot_ms - now_ms) / 1000)

    def _send_at(self, attempt: Ready, at_s: float) -> tuple[Decision, Outcome, int] | str:
        """Send at the reserved slot, unless the bucket was backed off (a 429) since: then take
        a new slot, or park the job until it."""
        wait_s = at_s - self.clock()
        if wait_s > 0:
            self.sleep(wait_s)
        if self.limiter is not None and self.limiter.held(
            attempt.bucket, ask_redis=wait_s > self.settings.attentive_rate_max_wait_s
        ):
            now_ms = int(self.clock() * 1000)
            wait_s = self.limiter.reserve(attempt.bucket)
            parked = self._park(attempt, now_ms, wait_s, BATCH_WAIT_S)
            if parked is not None:
                return parked
            self.sleep(wait_s)
        return self._send(attempt)

    def _senders(self) -> ThreadPoolExecutor:
        # Built on first use, so in a prefork child after the fork.
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(SENDER_THREADS, thread_name_prefix="attentive-send")
        return self._pool

    def _guarded(self, claim: Claim, now_ms: int) -> str:
        """`_attempt`, with any failure but Redis's turned into a ``crashed`` dead letter."""
        return self._crash_guard(claim, now_ms, lambda: self._attempt(claim, now_ms))

    def _crash_guard(self, claim: Claim, now_ms: int, step: Callable[[], T]) -> T | str:
        try:
            return step()
        except redis.RedisError:
            # Redis, not the job, failed: the task hands the message back, and if the attempt
            # cannot be recorded its lease brings the job back. Never a poison job.
            raise
        except Exception as exc:
            return self._crashed(claim, now_ms, exc)

    def _crashed(self, claim: Claim, now_ms: int, exc: Exception) -> str:
        summary = traceback_summary(exc)
        log.error(
            "job_id=%s crashed the worker: %s",
            claim.job_id,
            summary,
            extra={"job_id": claim.job_id, "outcome": "dead:crashed", "reason": "crashed"},
        )
        sentry.report_crash(exc, claim.job_id)
        history = (claim.history or []) + [
            {"at": _iso(now_ms), "attempt": claim.attempt, "status": None, "error": "crashed"}
        ]
        self._dead(claim, now_ms, history, DeadLetter("crashed", summary), None)
        return "dead:crashed"

    def _attempt(self, claim: Claim, now_ms: int) -> str:
        prepared = self._prepare(claim, now_ms)
        if isinstance(prepared, str):
            return prepared
        if self.limiter is not None:
            own = self._own_slot(prepared, now_ms)
            wait_s = own if own is not None else self.limiter.reserve(prepared.bucket)
            # A parked job is queued again PARK_LEAD_MS before its own slot: it waits for it here.
            max_wait_s = self.settings.attentive_rate_max_wait_s + (PARK_LEAD_MS / 1000 if own is not None else 0)
            parked = self._park(prepared, now_ms, wait_s, max_wait_s)
            if parked is not None:
                return parked
            if wait_s > 0:
                self.sleep(wait_s)
        decision, outcome, done_ms = self._send(prepared)
        return self._record(claim, done_ms, prepared.history, decision, outcome)

    def _prepare(self, claim: Claim, now_ms: int) -> Ready | str:
        """Everything before the send: a lost previous attempt, validation again, freshness,
        the destination. Returns the job ready to send, or the outcome already recorded."""
        if claim.history is None:
            raise ValueError("job record has a corrupt attempt history")
        history = list(claim.history)
        now = datetime.fromtimestamp(now_ms / 1000, UTC)
        if claim.lost_at_ms is not None:
            history.append(
                {
                    "at": _iso(claim.lost_at_ms),
                    "attempt": claim.attempt - 1,
                    "status": None,
                    "error": "worker lost mid-delivery",
                }
            )
            lost = decide(WorkerLost("the worker died mid-delivery"), claim.attempt - 1, None, now, self.policy, 0.0)
            if isinstance(lost, DeadLetter):
                return self._record(claim, now_ms, history, lost, None)
        try:
            job = parse_job(claim.job_json, self.settings, now, at_enqueue=False)
            account = account_of(job, self.settings)
        except InvalidJob as err:
            return self._record(claim, now_ms, history, DeadLetter(err.reason, str(err)), None)
        kind: str = job.kind  # type: ignore[attr-defined]
        occurred = getattr(job, "occurredAt", None)
        if kind in freshness.EVENT_KINDS and freshness.is_stale(occurred, now, self.policy.freshness_s):
            detail = (
                f"occurredAt is {freshness.age_s(occurred, now) / 3600:.1f} h old, past the "  # type: ignore[arg-type]
                f"{self.settings.attentive_freshness_hours:g} h window; not sent"
            )
            return self._record(claim, now_ms, history, DeadLetter(Stale.reason, detail), None)
        destination = self.destinations.for_job(job)
        return Ready(claim, job, kind, account, destination, destination.bucket(job, account), occurred, history)

    def _park(self, ready: Ready, now_ms: int, wait_s: float, max_wait_s: float) -> str | None:
        """Park the job until its send slot when that is more than ``max_wait_s`` away (or
        dead-letter it as stale if the event would be stale by then). None means: send at the slot."""
        if self.limiter is None or wait_s <= max_wait_s:
            return None
        claim, bucket = ready.claim, ready.bucket
        slot_ms = now_ms + int(wait_s * 1000)
        if ready.occurred is not None and freshness.is_stale(
            ready.occurred, datetime.fromtimestamp(slot_ms / 1000, UTC), self.policy.freshness_s
        ):
            detail = f"the rate limit for {bucket.lane} leaves no send slot before the event goes stale"
            return self._record(claim, now_ms, ready.history, DeadLetter(Stale.reason, detail), None)
        # Queued again a little ahead of the slot, so the promoter's pace never makes it late.
        self.store.defer(claim, now_ms, due_ms=slot_ms - PARK_LEAD_MS, slot_ms=slot_ms)
        return "deferred"

    def _send(self, ready: Ready) -> tuple[Decision, Outcome, int]:
        """Make the call and decide what follows: (decision, outcome, when it ended in epoch ms)."""
        claim = ready.claim
        outcome = ready.destination.deliver(ready.job, ready.account)
        self._adapt_rate(ready.bucket, outcome)
        done_ms = int(self.clock() * 1000)
        ready.history.append(
            {
                "at": _iso(done_ms),
                "attempt": claim.attempt,
                "status": outcome.status,
                "error": outcome.error.reason if outcome.error else None,
            }
        )
        decision = decide(
            outcome.error,
            claim.attempt,
            ready.occurred,
            datetime.fromtimestamp(done_ms / 1000, UTC),
            self.policy,
            self.rand(),
        )
        log.info(
            "job_id=%s kind=%s attempt=%d status=%s outcome=%s",
            claim.job_id,
            ready.kind,
            claim.attempt,
            outcome.status,
            _name(decision),
            extra={
                "job_id": claim.job_id,
                "kind": ready.kind,
                "endpoint": ready.destination.endpoint(ready.job),
                "account": ready.account.name,
                "attempt": claim.attempt,
                "status": outcome.status,
                "outcome": _name(decision),
                "reason": outcome.error.reason if outcome.error else None,
            },
        )
        return decision, outcome, done_ms

    def _adapt_rate(self, bucket: Bucket, outcome: Outcome) -> None:
        """A 429 or an exhausted second at Attentive holds back every worker, not just this job."""
        if self.limiter is None:
            return
        if isinstance(outcome.error, RateLimited):
            self.limiter.back_off(bucket, outcome.error.retry_after or 1.0)
        elif outcome.ratelimit_remaining == 0:
            # Attentive's current second is used up, but the next one may start any moment:
            # a short pause, not a full second (which stalls every worker and snowballs).
            self.limiter.back_off(bucket, EXHAUSTED_SECOND_PAUSE_S)

    def _record(
        self,
        claim: Claim,
        now_ms: int,
        history: list[dict[str, Any]],
        decision: Decision,
        outcome: Outcome | None,
        pipe: redis.client.Pipeline | None = None,
    ) -> str:
        """Record the decision; with ``pipe``, only queue the command (the caller checks what
        it returns: False when the delivery had been taken over)."""
        if isinstance(decision, Delivered):
            kept = self.store.delivered(claim, now_ms, pipe)
        elif isinstance(decision, Retry):
            kept = self.store.schedule(claim, now_ms, int(decision.delay_s * 1000), history, pipe)
        else:
            kept = self._dead(claim, now_ms, history, decision, outcome, pipe)
        if pipe is None and not kept:
            _taken_over(claim, decision)
        return _name(decision)

    def _dead(
        self,
        claim: Claim,
        now_ms: int,
        history: list[dict[str, Any]],
        decision: DeadLetter,
        outcome: Outcome | None,
        pipe: redis.client.Pipeline | None = None,
    ) -> bool:
        error = outcome.error if outcome else None
        level = logging.ERROR if decision.reason == "unauthorized" else logging.WARNING
        log.log(
            level,
            "job_id=%s dead-lettered reason=%s: %s",
            claim.job_id,
            decision.reason,
            decision.detail,
            extra={
                "job_id": claim.job_id,
                "attempt": claim.attempt,
                "outcome": f"dead:{decision.reason}",
                "reason": decision.reason,
                "status": outcome.status if outcome else None,
            },
        )
        job = _job_value(claim.job_json)
        sentry.report_dead_letter(decision.reason, str(job.get("kind", "")) if isinstance(job, dict) else "")
        entry = {
            "job_id": claim.job_id,
            "job": job,
            "reason": decision.reason,
            "detail": decision.detail,
            "status": outcome.status if outcome else None,
            "response": (error.body if error is not None else "")[:MAX_RESPONSE_KEPT],
            "attempts": history,
            "first_seen": _iso(claim.first_seen_ms),
            "last_seen": _iso(now_ms),
            "round": claim.round,
        }
        return self.store.dead_letter(claim, now_ms, decision.reason, entry, pipe)


@dataclass
class Ready:
    """A claimed job that passed every check, about to be sent."""

    claim: Claim
    job: BaseModel
    kind: str
    account: Account
    destination: Destination
    bucket: Bucket
    occurred: datetime | None
    history: list[dict[str, Any]]


def _counted(outcome: str) -> str:
    return outcome.split("_in_")[0]  # retry_in_1.2s counts as retry


def _taken_over(claim: Claim, decision: Decision) -> None:
    log.warning(
        "job_id=%s outcome %s discarded: the delivery was taken over after its lease ended",
        claim.job_id,
        _name(decision),
    )


def _skipped(job_id: str, ticket: str, why: str) -> str:
    # gone: already finished; stale: an old copy of the message; busy: another worker holds the
    # lease (if it died, the reaper queues the job again when the lease ends).
    log.info(
        "skipped job_id=%s ticket=%s: %s", job_id, ticket, why, extra={"job_id": job_id, "outcome": f"skipped:{why}"}
    )
    return f"skipped:{why}"


def _job_value(job_json: str) -> Any:
    try:
        return json.loads(job_json)
    except ValueError:
        return job_json  # kept as text so a person can still read a corrupt job


def _name(decision: Decision) -> str:
    if isinstance(decision, Delivered):
        return "delivered"
    if isinstance(decision, Retry):
        return f"retry_in_{decision.delay_s:.1f}s"
    return f"dead:{decision.reason}"
