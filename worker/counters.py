"""The counters behind `attentive-relay stats`.

Every job is counted once when enqueued (or replayed) and once when it ends: as delivered,
as dead-lettered under its reason, as erased (`attentive-relay erase` deleted it before it
ended) or as expired (its record outlived ``ATTENTIVE_JOB_RETENTION_HOURS``); ``retries``
counts scheduled retries. So at rest
``enqueued + replayed == delivered + sum(dead_letter.values()) + erased + expired``.

``accounts`` breaks delivered, dead letters, queue depth and scheduled jobs down by account
(`producers.accounts`). Its cost is bounded: every account's queue is one LLEN; the retry
schedule and the queued jobs are each read in chunks of `CHUNK` ids (one pipelined HMGET of
each job's ``account`` per chunk), at most `SCHEDULE_SCAN_LIMIT` ids, the oldest first; past
that, per-account ``scheduled`` and ``queued`` count only those (the top-level figures are
always exact). Accounts that
are no longer in the settings are found from their counters (``relay:stats:NAME``, one
SCAN of at most `KEYSPACE_SCAN_LIMIT` keys) and from the scheduled jobs read.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from producers import accounts, keys
from producers.errors import REASONS
from producers.settings import Settings

CHUNK = 1000
"""Scheduled job ids read per pipelined round trip."""
SCHEDULE_SCAN_LIMIT = 100_000
"""At most this many scheduled jobs are attributed to their accounts per call."""
KEYSPACE_SCAN_LIMIT = 200_000
"""At most this many keys are looked at (SCAN) to find the counters of accounts not in the settings."""


def _dead_letter(counts: dict[str, int]) -> dict[str, int]:
    """The ``dead:<reason>`` counters of a stats hash, every known reason present."""
    dead = {reason: counts.get(f"dead:{reason}", 0) for reason in REASONS}
    dead.update({k[5:]: v for k, v in counts.items() if k.startswith("dead:") and k[5:] not in dead})
    return dead


def _decoded(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in raw.items()}


def _by_account(client: redis.Redis, index: str) -> dict[str, int]:
    """The jobs of an index (the retry schedule, the queued jobs) by the account their record
    names (records gone meanwhile are left out)."""
    counts: dict[str, int] = {}
    for start in range(0, SCHEDULE_SCAN_LIMIT, CHUNK):
        ids = client.zrange(index, start, min(start + CHUNK, SCHEDULE_SCAN_LIMIT) - 1)
        if not ids:
            break
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(keys.job(job_id.decode()), "state", "account")
        for state, account in pipe.execute():
            if state is None:
                continue
            name = account.decode() if account else accounts.DEFAULT
            counts[name] = counts.get(name, 0) + 1
        if len(ids) < CHUNK:
            break
    return counts


def _counted_accounts(client: redis.Redis) -> list[str]:
    """Names of the accounts that have a counters hash (``relay:stats:NAME``), from a bounded SCAN."""
    prefix = keys.account_stats("")
    found: set[str] = set()
    cursor, looked = 0, 0
    while True:
        cursor, batch = client.scan(cursor, match=prefix + "*", count=CHUNK)
        looked += CHUNK
        found.update(k.decode()[len(prefix) :] for k in batch)
        if cursor == 0 or looked >= KEYSPACE_SCAN_LIMIT:
            break
    return sorted(n for n in found if accounts.NAME.match(n))


def stats(client: redis.Redis, settings: Settings, overdue_after_ms: int | None = None) -> dict[str, Any]:
    """Counters and current depths, as `attentive-relay stats --json` prints them.

    ``settings`` gives the accounts and their queues. ``queued`` counts the jobs waiting for a
    worker; ``queued_messages`` the broker messages that carry them, in every account's queue
    (a message carries up to `producers.queue.MAX_BATCH` jobs; KEDA scales on these).
    ``accounts`` holds each account's ``delivered``, ``dead_letter`` (by reason), ``queued``
    and ``scheduled`` (see the module's note on cost): every account in the settings, and any
    other one found in Redis.

    ``queued_overdue`` counts jobs that have said ``queued`` for longer than
    ``overdue_after_ms`` (default ``ATTENTIVE_ORPHAN_S``); ``oldest_queued_s`` is the longest
    such wait. Both stay near 0 on a healthy relay that keeps up; a value that grows means a
    backlog or jobs the reconciler cannot bring back.
    """
    if overdue_after_ms is None:
        overdue_after_ms = int(settings.attentive_orphan_s * 1000)
    scheduled_by = _by_account(client, keys.SCHEDULE)
    queued_by = _by_account(client, keys.QUEUED)
    found = sorted({*scheduled_by, *queued_by})
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
    for name in names:
        pipe.hgetall(keys.account_stats(name))
        pipe.llen(settings.queue_for(name))
    raw, scheduled, in_flight, dead_stored, overdue, oldest, waiting, queued, *per_account = pipe.execute()
    counts = _decoded(raw)
    by_account: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        account_counts = _decoded(per_account[2 * i])
        by_account[name] = {
            "delivered": account_counts.get("delivered", 0),
            "dead_letter": _dead_letter(account_counts),
            "queued": queued_by.get(name, 0),
            "scheduled": scheduled_by.get(name, 0),
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
        "replayed": counts.get("replayed", 0),
        "deferred": counts.get("deferred", 0),
        "skipped": {k[8:]: v for k, v in counts.items() if k.startswith("skipped:")},
        "dead_letter_stored": dead_stored,
        "queued_overdue": overdue,
        "oldest_queued_s": round(max(0, now_ms - oldest[0][1]) / 1000, 3) if oldest else 0.0,
        "reconciled": counts.get("reconciled", 0),
        "erased": counts.get("erased", 0),
        "expired": counts.get("expired", 0),
        "accounts": by_account,
    }
