"""One delivery attempt from claim to outcome: the body of the Celery task.

Order of checks: claim (fencing) -> a lost previous attempt -> validate again -> freshness ->
send -> retry policy -> record the decision. Any exception in here is a poison job: it is
dead-lettered as ``crashed`` with a traceback summary (exception type and code locations,
never values), so it cannot loop. A Redis error is not the job's fault: it propagates (the
task requeues the message) and the lease recovers the attempt.
"""

from __future__ import annotations

import json
import logging
import random
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis

from producers import freshness
from producers.errors import InvalidJob, RateLimited, Stale, WorkerLost
from producers.settings import Settings
from producers.validation import parse_job
from worker import sentry
from worker.destinations import Bucket, Destinations, Outcome, account_of
from worker.jobstore import Claim, JobStore
from worker.policy import DeadLetter, Decision, Delivered, Retry, RetryPolicy, decide
from worker.ratelimit import RateLimiter

log = logging.getLogger("attentive_relay.delivery")
MAX_RESPONSE_KEPT = 2000
#: How late a parked job may use its reserved rate-limit slot (the promoter runs every 0.1 s).
LATE_SLOT_MS = 500
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

    def run(self, job_id: str, ticket: str) -> str:
        """Attempt the job if this message holds its ticket. Returns the outcome's name."""
        now_ms = int(self.clock() * 1000)
        claim = self.store.claim(job_id, ticket, now_ms)
        if isinstance(claim, str):
            # gone: already finished; stale: an old copy of the message; busy: another worker
            # holds the lease (if it died, the reaper queues the job again when the lease ends).
            log.info(
                "skipped job_id=%s ticket=%s: %s",
                job_id,
                ticket,
                claim,
                extra={"job_id": job_id, "outcome": f"skipped:{claim}"},
            )
            return f"skipped:{claim}"
        try:
            return self._attempt(claim, now_ms)
        except redis.RedisError:
            # Redis, not the job, failed: the task hands the message back, and if the attempt
            # cannot be recorded its lease brings the job back. Never a poison job.
            raise
        except Exception as exc:
            summary = traceback_summary(exc)
            log.error(
                "job_id=%s crashed the worker: %s",
                job_id,
                summary,
                extra={"job_id": job_id, "outcome": "dead:crashed", "reason": "crashed"},
            )
            sentry.report_crash(exc, job_id)
            history = (claim.history or []) + [
                {"at": _iso(now_ms), "attempt": claim.attempt, "status": None, "error": "crashed"}
            ]
            self._dead(claim, now_ms, history, DeadLetter("crashed", summary), None)
            return "dead:crashed"

    def _attempt(self, claim: Claim, now_ms: int) -> str:
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
        bucket = destination.bucket(job, account)
        parked = self._take_slot(claim, bucket, occurred, now_ms, history)
        if parked is not None:
            return parked

        outcome = destination.deliver(job, account)
        self._adapt_rate(bucket, outcome)
        done_ms = int(self.clock() * 1000)
        history.append(
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
            occurred,
            datetime.fromtimestamp(done_ms / 1000, UTC),
            self.policy,
            self.rand(),
        )
        log.info(
            "job_id=%s kind=%s attempt=%d status=%s outcome=%s",
            claim.job_id,
            kind,
            claim.attempt,
            outcome.status,
            _name(decision),
            extra={
                "job_id": claim.job_id,
                "kind": kind,
                "endpoint": destination.endpoint(job),
                "account": account.name,
                "attempt": claim.attempt,
                "status": outcome.status,
                "outcome": _name(decision),
                "reason": outcome.error.reason if outcome.error else None,
            },
        )
        return self._record(claim, done_ms, history, decision, outcome)

    def _take_slot(
        self, claim: Claim, bucket: Bucket, occurred: datetime | None, now_ms: int, history: list[dict[str, Any]]
    ) -> str | None:
        """Wait for this attempt's rate-limit slot, or park the job until it. None means: send now."""
        if self.limiter is None:
            return None
        max_wait = self.settings.attentive_rate_max_wait_s
        if claim.slot_ms is not None and now_ms - claim.slot_ms <= LATE_SLOT_MS:
            # A little late is fine: Attentive counts requests per second, and the slot was ours.
            wait_s = max(0.0, (claim.slot_ms - now_ms) / 1000)
        else:
            # No slot yet, or it passed long ago while the job waited in the queue: sending now
            # could push a second over the limit, so take a fresh one (the missed slot goes unused).
            wait_s = self.limiter.reserve(bucket)
        if wait_s <= max_wait:
            if wait_s > 0:
                self.sleep(wait_s)
            return None
        slot_ms = now_ms + int(wait_s * 1000)
        if occurred is not None and freshness.is_stale(
            occurred, datetime.fromtimestamp(slot_ms / 1000, UTC), self.policy.freshness_s
        ):
            detail = f"the rate limit for {bucket.lane} leaves no send slot before the event goes stale"
            return self._record(claim, now_ms, history, DeadLetter(Stale.reason, detail), None)
        # Queued again a little ahead of the slot, so the promoter's pace never makes it late.
        lead_ms = int(max_wait * 500)
        self.store.defer(claim, now_ms, due_ms=slot_ms - lead_ms, slot_ms=slot_ms)
        return "deferred"

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
        self, claim: Claim, now_ms: int, history: list[dict[str, Any]], decision: Decision, outcome: Outcome | None
    ) -> str:
        if isinstance(decision, Delivered):
            kept = self.store.delivered(claim, now_ms)
        elif isinstance(decision, Retry):
            kept = self.store.schedule(claim, now_ms, int(decision.delay_s * 1000), history)
        else:
            kept = self._dead(claim, now_ms, history, decision, outcome)
        if not kept:
            log.warning(
                "job_id=%s outcome %s discarded: the delivery was taken over after its lease ended",
                claim.job_id,
                _name(decision),
            )
        return _name(decision)

    def _dead(
        self, claim: Claim, now_ms: int, history: list[dict[str, Any]], decision: DeadLetter, outcome: Outcome | None
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
        return self.store.dead_letter(claim, now_ms, decision.reason, entry)


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
