"""Observations of each attempt's end, for the metrics: delivery age, responses, stale events.

Workers are prefork processes, and any number of `attentive-relay metrics` endpoints read the
same Redis, so nothing is kept in process: the job store's finish script increments fields of
one hash, `KEY`, in the same step that records the outcome (a delivery taken over counts
nothing, and an outcome recorded is counted once). `JobStore` asks `on_delivered`,
`on_retry` and `on_dead` which fields; `read` turns the hash back into numbers.

Fields (``ACCOUNT`` an account name, ``KIND`` a job kind):

    age|ACCOUNT|KIND|LE   deliveries whose age fell in the bucket whose upper bound is LE (not
                          cumulative; `read` adds them up), LE one of `BUCKETS` or ``+Inf``
    age|ACCOUNT|KIND|sum  the sum of those ages, in seconds
    req|ACCOUNT|STATUS    requests that got a response of STATUS (`status_class`)
    stale|ACCOUNT|KIND    jobs dead-lettered unsent as past the freshness window

A delivery's age runs from the job's ``occurredAt`` to its 2xx; a kind without ``occurredAt``
(identity, attributes, Yotpo) counts from when the job was first queued.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from producers.store import keys

KEY = keys.PREFIX + "observed"
"""Hash of the fields above."""
BUCKETS: tuple[float, ...] = (
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
    1800,
    3600,
    7200,
    14400,
    21600,
    43200,
    86400,
    172800,
)
"""Upper bounds of the delivery-age buckets, in seconds: fast deliveries up to a minute, then a
backlog's hours, Attentive's 12-hour journey window (43,200 s) and past it."""
JOURNEY_WINDOW_S = 43200
"""Attentive starts no journey for an event that happened longer ago than this."""
STATUSES = ("2xx", "429", "4xx", "5xx", "none")
_KIND = re.compile(r"^[a-z_]{1,40}$")


def status_class(status: int | None) -> str:
    """``2xx``, ``429``, ``4xx`` (other), ``5xx`` (and anything else), or ``none`` (no response:
    a timeout or a connection error)."""
    if status is None:
        return "none"
    if status == 429:
        return "429"
    if 200 <= status < 300:
        return "2xx"
    if 400 <= status < 500:
        return "4xx"
    return "5xx"


def _bucket(age_s: float) -> str:
    return next((f"{b:g}" for b in BUCKETS if age_s <= b), "+Inf")


def _kind_and_occurred(job_json: str) -> tuple[str, float | None]:
    """The job's kind (``other`` if odd) and its ``occurredAt`` in epoch seconds, if it has one."""
    try:
        job = json.loads(job_json)
    except ValueError:
        return "other", None
    if not isinstance(job, dict):
        return "other", None
    kind = job.get("kind")
    kind = kind if isinstance(kind, str) and _KIND.match(kind) else "other"
    occurred = job.get("occurredAt")
    try:
        return kind, datetime.fromisoformat(occurred).timestamp() if isinstance(occurred, str) else None
    except ValueError:
        return kind, None


def on_delivered(account: str, job_json: str, first_seen_ms: int, now_ms: int) -> list[Any]:
    """Fields and increments for a job delivered at ``now_ms`` (the 2xx's time)."""
    kind, occurred_s = _kind_and_occurred(job_json)
    since_s = occurred_s if occurred_s is not None else first_seen_ms / 1000
    age_s = round(max(0.0, now_ms / 1000 - since_s), 3)
    base = f"age|{account}|{kind}|"
    return [base + _bucket(age_s), 1, base + "sum", age_s, f"req|{account}|2xx", 1]


def _sent_now(attempt: int, history: Any) -> list[Any]:
    """The request of this attempt, if it sent one: the last history entry is this attempt's
    and not a crash (a dead letter decided before sending names an earlier attempt, or none)."""
    if not isinstance(history, list) or not history or not isinstance(history[-1], dict):
        return []
    last = history[-1]
    if last.get("attempt") != attempt or last.get("error") == "crashed":
        return []
    status = last.get("status")
    return [status if isinstance(status, int) else None]


def on_retry(account: str, attempt: int, history: Any) -> list[Any]:
    """Fields and increments for a retry scheduled after this attempt's request."""
    return [x for status in _sent_now(attempt, history) for x in (f"req|{account}|{status_class(status)}", 1)]


def on_dead(account: str, attempt: int, reason: str, job_json: str, history: Any) -> list[Any]:
    """Fields and increments for a job dead-lettered (after a request, or before one)."""
    out = on_retry(account, attempt, history)
    if reason == "stale":
        out += [f"stale|{account}|{_kind_and_occurred(job_json)[0]}", 1]
    return out


@dataclass
class Observed:
    """`read`'s result."""

    ages: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    """(account, kind) -> {LE or "sum": value} (per bucket, not cumulative)."""
    requests: dict[tuple[str, str], float] = field(default_factory=dict)
    """(account, status class) -> count."""
    stale: dict[tuple[str, str], float] = field(default_factory=dict)
    """(account, kind) -> count."""


def read(client: Any) -> Observed:
    found = Observed()
    for raw_name, raw_value in client.hgetall(KEY).items():
        name, value = raw_name.decode(), float(raw_value)
        parts = name.split("|")
        if parts[0] == "age" and len(parts) == 4:
            found.ages.setdefault((parts[1], parts[2]), {})[parts[3]] = value
        elif parts[0] == "req" and len(parts) == 3:
            found.requests[(parts[1], parts[2])] = value
        elif parts[0] == "stale" and len(parts) == 3:
            found.stale[(parts[1], parts[2])] = value
    return found


def cumulative(per_bucket: dict[str, float]) -> list[tuple[str, float]]:
    """Prometheus buckets (cumulative, ``+Inf`` last) from per-bucket counts."""
    out, total = [], 0.0
    for le in [*(f"{b:g}" for b in BUCKETS), "+Inf"]:
        total += per_bucket.get(le, 0.0)
        out.append((le, total))
    return out
