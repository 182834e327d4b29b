"""Every Redis key attentive-relay uses, in one place.

All keys share the ``relay:`` prefix except the Celery queue itself, whose name is the
queue name (kombu's Redis transport keeps a queue as a plain list under that name).
"""

from __future__ import annotations

import hashlib

PREFIX = "relay:"

STATS = PREFIX + "stats"
"""Hash of counters: enqueued, delivered, retries, replayed, dead:<reason>."""

SCHEDULE = PREFIX + "schedule"
"""Sorted set of job ids waiting for a retry, scored by due time (epoch milliseconds)."""

LEASES = PREFIX + "leases"
"""Sorted set of job ids being delivered, scored by lease expiry (epoch milliseconds)."""

DEAD_INDEX = PREFIX + "dead"
"""Sorted set of dead-lettered job ids, scored by when they were dead-lettered."""

REPLAYING = PREFIX + "replaying"
"""Sorted set of the ids of jobs that `attentive-relay dlq replay` queued again, scored by when
(epoch ms), written in the same transaction as the job. Every replay counts those still queued,
running or due soon per lane (`worker.deadletter`), so bulk replays, concurrent or resumed ones
included, never put more than a window of work in front of fresh jobs. Holds ids only; an id
leaves once its job record is gone."""

QUEUED = PREFIX + "queued"
"""Sorted set of job ids in state ``queued``, scored by when the job was queued in this round
(epoch ms): enqueued, promoted, reclaimed, released or moved. Its score is the job's true
wait: the reconciler never changes it, not even when it queues a lost message again.

The job store is the truth and the broker message only a wake-up: the reconciler reads this
index to find queued jobs whose message is gone (see `worker.jobstore`), and `stats` reads
their ages from it."""

WAITING = PREFIX + "waiting"
"""Sorted set of job ids in state ``waiting`` (for an identity job, `producers.store.ordering`),
scored by when they started waiting."""

AWAITED = PREFIX + "awaited"
"""Sorted set of the ids of identity jobs that have waiters (`waiters`), scored by when the
reconciler is next to check that the job still exists (it may vanish without ending: erased,
expired)."""

RELEASING = PREFIX + "releasing"
"""Sorted set of tokens of released waiter lists (`released`) still holding jobs, scored by
when their identity job ended or was found gone: the promoters queue those jobs a chunk at
a time, oldest list first."""

RECONCILE_LOCK = PREFIX + "reconcile"
"""String with a short expiry: held by the promoter running the reconciliation pass, so one
pass runs at a time across all workers."""

RECONCILE_CURSOR = PREFIX + "reconcile-cursor"
"""Hash of where the reconciler's next pass starts (a rank) in the overdue part of `QUEUED`
(field ``queued``) and in `WAITING` (field ``waiting``): each pass looks at the next few, so
every job is looked at in turn, not the same oldest ones again and again."""


PAUSED = PREFIX + "paused"
"""Hash ``ACCOUNT|DESTINATION`` -> JSON ``{"reason", "status", "since"}``: deliveries paused
after a 401 or 403 (`worker.pause`), until ``attentive-relay resume``."""
CIRCUIT = PREFIX + "circuit"
"""Hash ``ACCOUNT|DESTINATION`` -> JSON ``{"reason", "since", "requests", "failed"}``: circuits
open after sustained failure (`worker.circuit`)."""
ERASURE_EPOCH = PREFIX + "erasure-epoch"
"""Counter bumped by every erasure: a worker that sees it change checks its held jobs again
before it sends without a round trip (`worker.lease`)."""
ERASURE_KEY = PREFIX + "erasure-key"
"""String holding the key of the erasure index's keyed hash, when ATTENTIVE_ERASURE_KEY is unset."""


def person(digest: str) -> str:
    """Set of the ids of the jobs that mention one person (a phone number or an email), named by
    a keyed hash of it (`producers.store.erasure`), never by the value itself."""
    return f"{PREFIX}person:{digest}"


def identity(digest: str) -> str:
    """String holding the id of the latest identity job that links one external id in one
    account, named by a keyed hash of both (`producers.store.ordering.marker`)."""
    return f"{PREFIX}identity:{digest}"


def held(lane: str) -> str:
    """Sorted set of the ids of the jobs held while ``lane`` (``ACCOUNT|DESTINATION``) is
    paused, scored by when they were held (`worker.pause`)."""
    return f"{PREFIX}held:{lane}"


def circuit_probe(lane: str) -> str:
    """String with an expiry: held while one job of an open circuit's ``lane`` goes as its probe."""
    return f"{PREFIX}circuit-probe:{lane}"


def pause_probe(lane: str) -> str:
    """String with an expiry: held for a period by the worker that probes a paused ``lane``'s
    token (`worker.pause_probe`), so one worker probes it per period."""
    return f"{PREFIX}pause-probe:{lane}"


def waiters(job_id: str) -> str:
    """List of the ids of the jobs waiting for identity job ``job_id`` to end, oldest first."""
    return f"{PREFIX}waiters:{job_id}"


def released(token: str) -> str:
    """A `waiters` list renamed when its identity job ended or vanished, until every job in it
    is queued (`RELEASING`). ``token`` is the ended attempt's ticket, or the job id and the time
    it was found gone: unique, so a job replayed later starts a list of its own."""
    return f"{PREFIX}released:{token}"


def batch(batch_id: str) -> str:
    """String holding a batch message (`producers.store.message.batch_message`) while it waits in the
    queue, for the reconciler to look for; the worker that takes it deletes it."""
    return f"{PREFIX}batch:{batch_id}"


def account_stats(account: str) -> str:
    """Hash of one account's counters (delivered, dead:<reason>); ``default`` for the default account."""
    return f"{PREFIX}stats:{account}"


def job(job_id: str) -> str:
    """Hash holding one live job: its JSON, state, ticket, attempts."""
    return f"{PREFIX}job:{job_id}"


def seen(message_id: str) -> str:
    """String marking a Segment ``messageId`` as queued (`producers.store.enqueue.push_jobs`'s ``once``),
    named by a hash of it; it expires after the freshness window."""
    digest = hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{PREFIX}seen:{digest}"


def dead(job_id: str) -> str:
    """String holding one dead-letter entry as JSON."""
    return f"{PREFIX}dead:{job_id}"


def rate_bucket(token_tag: str, kind: str) -> str:
    """String holding a GCRA bucket's next free slot (Redis-clock microseconds).

    The braces make it a Redis Cluster hash tag; the token is present only as a hash prefix.
    """
    return f"{PREFIX}rate:{{{token_tag}:{kind}}}"


def rate_hold(token_tag: str, kind: str) -> str:
    """String present while a bucket is held back after a 429 (`worker.ratelimit.RateLimiter.back_off`),
    in the same Redis Cluster slot as its bucket."""
    return f"{PREFIX}rate-hold:{{{token_tag}:{kind}}}"


PRIVACY_REQUESTS = PREFIX + "privacy-requests"
"""Sorted set of the ids of deletion requests forwarded to Attentive (`worker.privacy`), scored
by when they were made (epoch ms): what ``attentive-relay erase --status`` lists."""

PRIVACY_DUE = PREFIX + "privacy-due"
"""Sorted set of the ids of deletion requests still to file or to check, scored by when next
(epoch ms); a request leaves it once Attentive processed it or it failed."""


def privacy_request(request: str) -> str:
    """Hash of one deletion request: the keyed hash of the person, the account, its state,
    Attentive's request id and times. Never the phone number or email."""
    return f"{PREFIX}privacy:{request}"


def privacy_subject(request: str) -> str:
    """String holding the phone number or email a deletion request names, only until it is
    filed with Attentive (or fails): Attentive's API needs the value, so nothing else can."""
    return f"{PREFIX}privacy-subject:{request}"
