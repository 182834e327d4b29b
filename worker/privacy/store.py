"""Deletion requests forwarded to Attentive, as records in Redis.

One request per person and account. Its record (`producers.store.keys.privacy_request`) holds the
keyed hash of the person (the digest `producers.store.erasure.person_key` names their index by),
the account, the state, Attentive's request id and the times; never the phone number or
email. States::

    pending --filed--> filed --processed--> processed
       |                 |
       '----failed-------'----failed (a permanent answer while checking)--> failed

The value a request names is kept apart (`producers.store.keys.privacy_subject`) from the moment
the request is made until it is filed or fails, and deleted in the same transaction that
records either: Attentive's API needs the value itself, and keeping it until then is what
lets a request survive an Attentive outage or the ``erase`` command's process dying (a
worker files it later). Its expiry (`SUBJECT_TTL_MS`) outlasts the whole retry schedule.

Requests still to file or to check are in `producers.store.keys.PRIVACY_DUE`, scored by when; a
process takes one by moving its score past a lease (`claim`, one Lua script), so of the
``erase`` command and any number of workers exactly one acts on it at a time. Records expire
`RECORD_RETENTION_MS` after their last change: they are the shop's proof that the deletion
was asked for. Counters go to the relay's stats hash (`COUNTERS`).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import redis

from producers.store import keys, lua, replies

PENDING, FILED, PROCESSED, FAILED = "pending", "filed", "processed", "failed"
RECORD_RETENTION_MS = 400 * 86_400_000
"""A request's record is kept this long after its last change: Attentive deletes within 30
days, and a shop may be asked to show the request more than a year later."""
SUBJECT_TTL_MS = 24 * 3_600_000
"""The longest the value a request names may be kept: far beyond the retry schedule (about
1.7 hours with the default backoff), so it never expires while the request can still be filed."""
COUNTERS = {
    "filed": "privacy_filed",
    "processed": "privacy_processed",
    "retries": "privacy_retries",
    "failed": "privacy_failed:",
}
"""Fields of the stats hash (`producers.store.keys.STATS`): failures are counted by reason."""

_CLAIM = lua.script("worker.privacy", "store_claim")


@dataclass(frozen=True)
class Request:
    """One deletion request as its record holds it. Times are epoch milliseconds."""

    id: str
    person: str
    account: str
    state: str
    created_ms: int
    attempts: int = 0
    """Attempts at the current step (filing, or checking since the last answer)."""
    request_id: str | None = None
    filed_ms: int | None = None
    processed_ms: int | None = None
    reason: str | None = None
    """The last failure's reason (`producers.errors`), kept after a retry succeeds."""
    detail: str | None = None

    def row(self) -> dict[str, object]:
        """What ``attentive-relay erase --status --json`` prints: no phone number or email."""
        return {
            "person": self.person,
            "account": self.account,
            "request_id": self.request_id,
            "state": self.state,
            "created": _iso(self.created_ms),
            "filed": _iso(self.filed_ms),
            "processed": _iso(self.processed_ms),
            "attempts": self.attempts,
            "reason": self.reason,
            "detail": self.detail,
            "id": self.id,
        }


class RequestStore:
    """The records, the due index and the counters. Thread-safe (redis-py's pool)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def create(self, person: str, account: str, subject: str, now_ms: int) -> str:
        """Record a pending request for ``person`` (a digest) at ``account``, keeping ``subject``
        (the phone number or email) until it is filed; due at once. Returns its id."""
        request = secrets.token_hex(12)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(
            keys.privacy_request(request),
            mapping={"person": person, "account": account, "state": PENDING, "created": now_ms, "attempts": 0},
        )
        pipe.pexpire(keys.privacy_request(request), RECORD_RETENTION_MS)
        pipe.set(keys.privacy_subject(request), subject, px=SUBJECT_TTL_MS)
        pipe.zadd(keys.PRIVACY_REQUESTS, {request: now_ms})
        pipe.zadd(keys.PRIVACY_DUE, {request: now_ms})
        pipe.execute()
        return request

    def get(self, request: str) -> Request | None:
        raw = self.client.hgetall(keys.privacy_request(request))
        if not raw:
            return None
        f = {replies.text(k): replies.text(v) for k, v in raw.items()}

        def ms(name: str) -> int | None:
            return int(f[name]) if f.get(name) else None

        return Request(
            id=request,
            person=f.get("person", ""),
            account=f.get("account", ""),
            state=f.get("state", ""),
            created_ms=int(f.get("created") or 0),
            attempts=int(f.get("attempts") or 0),
            request_id=f.get("request_id") or None,
            filed_ms=ms("filed"),
            processed_ms=ms("processed"),
            reason=f.get("reason") or None,
            detail=f.get("detail") or None,
        )

    def subject(self, request: str) -> str | None:
        """The value the request names, while it is still to be filed."""
        value = self.client.get(keys.privacy_subject(request))
        return replies.text(value) if value is not None else None

    def due(self, now_ms: int, limit: int) -> list[str]:
        """Ids of requests due by ``now_ms``, the longest due first."""
        due = self.client.zrangebyscore(keys.PRIVACY_DUE, "-inf", now_ms, start=0, num=limit)
        return [replies.text(m) for m in cast("list[bytes]", due)]  # members only: no scores asked

    def open(self) -> int:
        """Requests still to file or to check."""
        return int(self.client.zcard(keys.PRIVACY_DUE))

    def claim(self, request: str, now_ms: int, until_ms: int) -> bool:
        """Take a due request until ``until_ms``; False when it is not due (another process has
        it, or it is done)."""
        return bool(_CLAIM(self.client, keys=[keys.PRIVACY_DUE], args=[request, now_ms, until_ms]))

    def filed(self, request: str, request_id: str, now_ms: int, next_ms: int) -> None:
        """Attentive took the request: keep its id, forget the value, check it at ``next_ms``."""
        self._write(
            request,
            {"state": FILED, "request_id": request_id, "filed": now_ms, "attempts": 0},
            next_ms=next_ms,
            counter=COUNTERS["filed"],
            drop_subject=True,
        )

    def processed(self, request: str, now_ms: int) -> None:
        """Attentive reports the request processed: nothing is left to do for it."""
        self._write(request, {"state": PROCESSED, "processed": now_ms}, counter=COUNTERS["processed"])

    def failed(self, request: str, reason: str, detail: str) -> None:
        """The request cannot go further (a permanent answer, or retries used up): forget the value."""
        fields = {"state": FAILED, "reason": reason, "detail": detail}
        self._write(request, fields, counter=COUNTERS["failed"] + reason, drop_subject=True)

    def retry(self, request: str, attempts: int, next_ms: int, reason: str, detail: str) -> None:
        """A transient failure: try again at ``next_ms`` (counted as a retry)."""
        fields: dict[str, str | int] = {"attempts": attempts, "reason": reason, "detail": detail}
        self._write(request, fields, next_ms=next_ms, counter=COUNTERS["retries"])

    def later(self, request: str, next_ms: int, **fields: str | int) -> None:
        """Act on the request again at ``next_ms`` (a rate-limit slot, the next check)."""
        self._write(request, fields, next_ms=next_ms)

    def settle(self, request: str) -> None:
        """Take a request that needs nothing more off the due index."""
        self.client.zrem(keys.PRIVACY_DUE, request)

    def forget(self, request: str) -> None:
        """Drop the id of a request whose record expired from both indexes."""
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(keys.PRIVACY_DUE, request)
        pipe.zrem(keys.PRIVACY_REQUESTS, request)
        pipe.execute()

    def list(self, limit: int, person: str | None = None) -> list[Request]:
        """Requests newest first (only ``person``'s when given); ids whose record expired are dropped."""
        found: list[Request] = []
        for member in cast("list[bytes]", self.client.zrevrange(keys.PRIVACY_REQUESTS, 0, -1)):  # no scores asked
            request = self.get(replies.text(member))
            if request is None:
                self.forget(replies.text(member))
            elif person is None or request.person == person:
                found.append(request)
                if len(found) >= limit:
                    break
        return found

    def _write(
        self,
        request: str,
        fields: Mapping[str, str | int],
        *,
        next_ms: int | None = None,
        counter: str | None = None,
        drop_subject: bool = False,
    ) -> None:
        """One transaction: the fields, the due index (None: no longer due), the counter."""
        record = keys.privacy_request(request)
        pipe = self.client.pipeline(transaction=True)
        if fields:
            # copied into a dict of redis-py's own key type: a Mapping is invariant in its keys
            pipe.hset(record, mapping={name: value for name, value in fields.items()})
        pipe.pexpire(record, RECORD_RETENTION_MS)
        if next_ms is None:
            pipe.zrem(keys.PRIVACY_DUE, request)
        else:
            pipe.zadd(keys.PRIVACY_DUE, {request: next_ms})
        if drop_subject:
            pipe.delete(keys.privacy_subject(request))
        if counter is not None:
            pipe.hincrby(keys.STATS, counter, 1)
        pipe.execute()


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
