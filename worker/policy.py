"""The retry policy: a pure function from what happened to what to do next.

``decide(error, attempt, occurred_at, now, policy, rand)`` returns one of

- `Delivered`                   Attentive answered 2xx (``error`` is None);
- `Retry(delay_s)`              a transient error (429, 5xx, network, lost worker) with attempts
                                left, and the next attempt still inside the freshness window;
- `DeadLetter(reason, detail)`  a permanent error, attempts used up, or a retry that would land
                                after the event went stale (reason ``stale``);
- `Pause(reason, detail)`       a 401 or 403 answer: the token is revoked or lacks a scope, so
                                every job of the account at that destination would fail alike;
                                the job is held and the account paused (`worker.pause`), not
                                dead-lettered.

Delays: ``Retry-After`` when a 429 carries one (capped at the backoff maximum), otherwise
full jitter: uniform in [0, min(max_s, base_s * 2**(attempt-1))] (AWS's "full jitter", which
Attentive recommends). With the defaults (base 5 s, max 30 min, 12 attempts) a job keeps
trying for about an hour on average before it is dead-lettered.

Nothing here reads the clock, Redis or randomness itself: callers pass ``now`` and ``rand``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from producers.errors import RateLimited, RelayError, Stale, Unauthorized
from producers.job import freshness
from producers.settings import Settings


@dataclass(frozen=True)
class Delivered:
    pass


@dataclass(frozen=True)
class Retry:
    delay_s: float


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    detail: str


@dataclass(frozen=True)
class Pause:
    reason: str
    detail: str


Decision = Delivered | Retry | DeadLetter | Pause


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_s: float
    max_s: float
    freshness_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            settings.attentive_max_attempts,
            settings.attentive_backoff_base_s,
            settings.attentive_backoff_max_s,
            settings.freshness_s,
        )


def backoff_s(attempt: int, policy: RetryPolicy, rand: float) -> float:
    """Full-jitter delay after failed attempt number ``attempt`` (1-based); ``rand`` in [0, 1)."""
    ceiling = min(policy.max_s, policy.base_s * 2 ** min(attempt - 1, 62))
    return rand * ceiling


def decide(
    error: RelayError | None,
    attempt: int,
    occurred_at: datetime | None,
    now: datetime,
    policy: RetryPolicy,
    rand: float,
) -> Decision:
    """What to do after attempt number ``attempt`` (1-based) ended with ``error``."""
    if error is None:
        return Delivered()
    if isinstance(error, Unauthorized) and error.status:  # a response said so; not a missing token
        return Pause(error.reason, str(error))
    if not error.retryable:
        return DeadLetter(error.reason, str(error))
    if attempt >= policy.max_attempts:
        return DeadLetter(error.reason, f"gave up after {attempt} attempts; last: {error}")
    if isinstance(error, RateLimited) and error.retry_after is not None:
        delay = min(error.retry_after, policy.max_s)
    else:
        delay = backoff_s(attempt, policy, rand)
    if occurred_at is not None and now + timedelta(seconds=delay) > freshness.expires_at(
        occurred_at, policy.freshness_s
    ):
        return DeadLetter(
            Stale.reason, f"next attempt in {delay:.0f} s would fall past the freshness window; last: {error}"
        )
    return Retry(delay)
