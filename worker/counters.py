"""The counters behind `attentive-relay stats`.

Every job is counted once when enqueued (or replayed) and once when it ends: as delivered,
as dead-lettered under its reason, as erased (`attentive-relay erase` deleted it before it
ended) or as expired (its record outlived ``ATTENTIVE_JOB_RETENTION_HOURS``); ``retries``
counts scheduled retries. So at rest
``enqueued + replayed == delivered + sum(dead_letter.values()) + erased + expired``.

``accounts`` breaks delivered, dead letters, queue depth and scheduled jobs down by account
(`producers.accounts`). Its cost is bounded: every account's queue is one LLEN; the retry
schedule and the queued jobs are each read in chunks of `CHUNK` ids (one pipelined HMGET of
each job's ``state``, ``account`` and ``queue`` per chunk), at most `SCHEDULE_SCAN_LIMIT` ids,
the oldest first; past that, per-account ``scheduled``, ``queued``, ``oldest_queued_s`` and
``unserved`` count only those (the top-level figures are always exact). Accounts that are no
longer in the settings are found from their counters (``relay:stats:NAME``, one SCAN of at
most `KEYSPACE_SCAN_LIMIT` keys) and from the jobs read.

A job is *unserved* when no worker configured like these settings takes it: its account is
not in ``ATTENTIVE_ACCOUNTS``, or its record names a queue other than its account's (say,
``ATTENTIVE_QUEUE`` was renamed). Such jobs wait until their records expire; ``unserved``
names their accounts and ``attentive-relay requeue`` moves them. The judgement is only as good
as the settings ``stats`` runs with: give it the workers' ``ATTENTIVE_ACCOUNTS`` and
``ATTENTIVE_QUEUE``. A worker started with ``-Q`` (consuming fewer queues) is not seen; its
unconsumed jobs show as growing ``oldest_queued_s`` of their account and as ``queued_overdue``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from producers import accounts
from producers.errors import REASONS
from producers.settings import Settings
from producers.store import keys, replies
from worker.circuit import Circuits
from worker.jobstore import UNKNOWN_ACCOUNT
from worker.pause import Pauses
from worker.privacy.store import COUNTERS

CHUNK = 1000
"""Scheduled job ids read per pipelined round trip."""
SCHEDULE_SCAN_LIMIT = 100_000
"""At most this many scheduled jobs are attributed to their accounts per call."""
KEYSPACE_SCAN_LIMIT = 200_000
"""At most this many keys are looked at (SCAN) to find the counters of accounts not in the settings."""


def _dead_letter(counts: dict[str, int]) -> dict[str, int]:
    """The ``dead:<reason>`` counters of a stats hash, every known reason present."""
    dead = {reason: counts.get(f"dead:{reason}", 0) for reason in (*REASONS, UNKNOWN_ACCOUNT)}
    dead.update({k[5:]: v for k, v in counts.items() if k.startswith("dead:") and k[5:] not in dead})
    return dead


def _privacy(counts: dict[str, int], still_open: int) -> dict[str, Any]:
    """Deletion requests forwarded to Attentive (`worker.privacy.store.COUNTERS`): ``filed``,
    ``processed``, ``retries``, ``failed`` by reason, and ``open`` (still to file or to check)."""
    failed = COUNTERS["failed"]
    return {
        "filed": counts.get(COUNTERS["filed"], 0),
        "processed": counts.get(COUNTERS["processed"], 0),
        "retries": counts.get(COUNTERS["retries"], 0),
        "failed": {k[len(failed) :]: v for k, v in counts.items() if k.startswith(failed)},
        "open": still_open,
    }


def _decoded(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in raw.items()}


@dataclass
class _Found:
    """What a walk over an index found, by account."""

    counts: dict[str, int] = field(default_factory=dict)
    oldest_ms: dict[str, float] = field(default_factory=dict)
    """The lowest score of each account's jobs (for the queued index: when its oldest was queued)."""
    unserved: dict[str, int] = field(default_factory=dict)
    unserved_oldest_ms: dict[str, float] = field(default_factory=dict)
    unserved_queues: dict[str, set[str]] = field(default_factory=dict)


def served(settings: Settings, account: str, queue: str | None) -> bool:
    """Whether workers configured by ``settings`` take a job of ``account`` whose record names
    ``queue`` (None: a record from before records named their queue, queued on the default)."""
    return account in settings.accounts and (queue is None or queue == settings.queue_for(account))


def _by_account(client: redis.Redis, index: str, settings: Settings) -> _Found:
    """The jobs of an index (the retry schedule, the queued jobs) by the account their record
    names, oldest first (records gone meanwhile are left out), and which of them are unserved."""
    found = _Found()
    for start in range(0, SCHEDULE_SCAN_LIMIT, CHUNK):
        stop = min(start + CHUNK, SCHEDULE_SCAN_LIMIT) - 1
        # withscores=True: (member, score) pairs; the relay's clients return bytes.
        rows = cast("list[tuple[bytes, float]]", client.zrange(index, start, stop, withscores=True))
        if not rows:
            break
        pipe = client.pipeline(transaction=False)
        for job_id, _ in rows:
            pipe.hmget(keys.job(job_id.decode()), "state", "account", "queue")
        for (_, score), (state, account, queue) in zip(rows, pipe.execute(), strict=True):
            if state is None:
                continue
            name = account.decode() if account else accounts.DEFAULT
            found.counts[name] = found.counts.get(name, 0) + 1
            found.oldest_ms.setdefault(name, score)
            queue_name = queue.decode() if queue else None
            if not served(settings, name, queue_name):
                found.unserved[name] = found.unserved.get(name, 0) + 1
                found.unserved_oldest_ms.setdefault(name, score)
                found.unserved_queues.setdefault(name, set()).update([queue_name] if queue_name else [])
        if len(rows) < CHUNK:
            break
    return found


def _counted_accounts(client: redis.Redis) -> list[str]:
    """Names of the accounts that have a counters hash (``relay:stats:NAME``), from a bounded SCAN."""
    prefix = keys.account_stats("")
    found: set[str] = set()
    cursor, looked = 0, 0
    while True:
        cursor, batch = client.scan(cursor, match=prefix + "*", count=CHUNK)
        looked += CHUNK
        found.update(replies.text(k)[len(prefix) :] for k in batch)
        if cursor == 0 or looked >= KEYSPACE_SCAN_LIMIT:
            break
    return sorted(n for n in found if accounts.NAME.match(n))


def stats(client: redis.Redis, settings: Settings, overdue_after_ms: int | None = None) -> dict[str, Any]:
    """Counters and current depths, as `attentive-relay stats --json` prints them.

    ``settings`` gives the accounts and their queues. ``queued`` counts the jobs waiting for a
    worker; ``queued_messages`` the broker messages that carry them, in every account's queue
    (a message carries up to `producers.store.message.MAX_BATCH` jobs; KEDA scales on these).
    ``accounts`` holds each account's ``delivered``, ``dead_letter`` (by reason), ``queued``,
    ``scheduled``, ``oldest_queued_s`` and ``served`` (whether it is in the settings; see the
    module's note on cost): every account in the settings, and any other one found in Redis.

    ``queued_overdue`` counts jobs that have said ``queued`` for longer than
    ``overdue_after_ms`` (default ``ATTENTIVE_ORPHAN_S``); ``oldest_queued_s`` is the longest
    such wait. Ages are true ages, from when the job was queued in this round (enqueued,
    promoted for a retry, released by its identity job, moved): a job nobody takes keeps
    aging. Both stay near 0 on a healthy relay that keeps up; a value that grows means a
    backlog, jobs no worker takes, or jobs the reconciler cannot bring back.

    ``queued_unserved`` counts queued jobs that no worker configured like ``settings`` takes
    (module note); ``unserved`` names their accounts: ``{NAME: {queued, scheduled, queues,
    oldest_queued_s}}``. ``waiting`` counts jobs waiting for an identity job,
    ``oldest_waiting_s`` the longest such wait, ``waiters_over_cap`` the jobs queued without
    waiting because their identity job had ``ATTENTIVE_MAX_WAITERS`` already. ``privacy``
    counts the deletion requests forwarded to Attentive by ``erase`` (`_privacy`). ``paused``
    maps each paused ``ACCOUNT|DESTINATION`` to its reason, status, since and held jobs
    (`worker.pause`); ``circuits`` each open circuit likewise (`worker.circuit`).
    """
    if overdue_after_ms is None:
        overdue_after_ms = int(settings.attentive_orphan_s * 1000)
    scheduled_by = _by_account(client, keys.SCHEDULE, settings)
    queued_by = _by_account(client, keys.QUEUED, settings)
    found = sorted({*scheduled_by.counts, *queued_by.counts})
    names = list(dict.fromkeys([*settings.accounts, *_counted_accounts(client), *found]))
    now_ms = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.STATS)
    pipe.zcard(keys.SCHEDULE)
    pipe.zcard(keys.LEASES)
    pipe.zcard(keys.DEAD_INDEX)
    pipe.zcount(keys.QUEUED, "-inf", now_ms - overdue_after_ms)
    pipe.zrange(keys.QUEUED, 0, 0, withscores=True)
    pipe.zcard(keys.WAITING)
    pipe.zcard(keys.QUEUED)
    pipe.zrange(keys.WAITING, 0, 0, withscores=True)
    pipe.zcard(keys.PRIVACY_DUE)
    for name in names:
        pipe.hgetall(keys.account_stats(name))
        pipe.llen(settings.queue_for(name))
    (
        raw,
        scheduled,
        in_flight,
        dead_stored,
        overdue,
        oldest,
        waiting,
        queued,
        oldest_waiting,
        privacy_open,
        *per_account,
    ) = pipe.execute()
    counts = _decoded(raw)

    def age_s(since_ms: float | None) -> float:
        return round(max(0, now_ms - since_ms) / 1000, 3) if since_ms is not None else 0.0

    by_account: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        account_counts = _decoded(per_account[2 * i])
        by_account[name] = {
            "delivered": account_counts.get("delivered", 0),
            "dead_letter": _dead_letter(account_counts),
            "queued": queued_by.counts.get(name, 0),
            "scheduled": scheduled_by.counts.get(name, 0),
            "oldest_queued_s": age_s(queued_by.oldest_ms.get(name)),
            "served": name in settings.accounts,
        }
    unserved = {
        name: {
            "queued": queued_by.unserved.get(name, 0),
            "scheduled": scheduled_by.unserved.get(name, 0),
            "queues": sorted(
                queued_by.unserved_queues.get(name, set()) | scheduled_by.unserved_queues.get(name, set())
            ),
            "oldest_queued_s": age_s(queued_by.unserved_oldest_ms.get(name)),
        }
        for name in names
        if name in queued_by.unserved or name in scheduled_by.unserved
    }
    return {
        "enqueued": counts.get("enqueued", 0),
        "delivered": counts.get("delivered", 0),
        "retries": counts.get("retries", 0),
        "dead_letter": _dead_letter(counts),
        "queued": queued,
        "queued_messages": sum(per_account[1::2]),
        "scheduled": scheduled,
        "in_flight": in_flight,
        "waiting": waiting,
        "oldest_waiting_s": age_s(oldest_waiting[0][1] if oldest_waiting else None),
        "waiters_over_cap": counts.get("waiters_over_cap", 0),
        "replayed": counts.get("replayed", 0),
        "deferred": counts.get("deferred", 0),
        "skipped": {k[8:]: v for k, v in counts.items() if k.startswith("skipped:")},
        "dead_letter_stored": dead_stored,
        "queued_overdue": overdue,
        "oldest_queued_s": age_s(oldest[0][1] if oldest else None),
        "queued_unserved": sum(u["queued"] for u in unserved.values()),
        "unserved": unserved,
        "reconciled": counts.get("reconciled", 0),
        "erased": counts.get("erased", 0),
        "expired": counts.get("expired", 0),
        "privacy": _privacy(counts, privacy_open),
        "paused": Pauses(client).listed(),
        "circuits": Circuits(client, settings).listed(),
        "accounts": by_account,
    }
