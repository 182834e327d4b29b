"""The counters behind `attentive-relay stats`.

Every job is counted once when enqueued (or replayed) and once when it ends: as delivered,
as dead-lettered under its reason, as erased (`attentive-relay erase` deleted it before it
ended) or as expired (its record outlived ``ATTENTIVE_JOB_RETENTION_HOURS``); ``retries``
counts scheduled retries. So at rest
``enqueued + replayed == delivered + sum(dead_letter.values()) + erased + expired``.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from producers import keys
from producers.errors import REASONS


def stats(client: redis.Redis, queue: str, overdue_after_ms: int = 60_000) -> dict[str, Any]:
    """Counters and current depths, as `attentive-relay stats --json` prints them.

    ``queued_overdue`` counts jobs that have said ``queued`` for longer than
    ``overdue_after_ms`` (``ATTENTIVE_ORPHAN_S``); ``oldest_queued_s`` is the longest such
    wait. Both stay near 0 on a healthy relay that keeps up; a value that grows means a backlog
    or jobs the reconciler cannot bring back.
    """
    now_ms = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.STATS)
    pipe.llen(queue)
    pipe.zcard(keys.SCHEDULE)
    pipe.zcard(keys.LEASES)
    pipe.zcard(keys.DEAD_INDEX)
    pipe.zcount(keys.QUEUED, "-inf", now_ms - overdue_after_ms)
    pipe.zrange(keys.QUEUED, 0, 0, withscores=True)
    raw, queued, scheduled, in_flight, dead_stored, overdue, oldest = pipe.execute()
    counts = {k.decode(): int(v) for k, v in raw.items()}
    dead = {reason: counts.get(f"dead:{reason}", 0) for reason in REASONS}
    dead.update({k[5:]: v for k, v in counts.items() if k.startswith("dead:") and k[5:] not in dead})
    return {
        "enqueued": counts.get("enqueued", 0),
        "delivered": counts.get("delivered", 0),
        "retries": counts.get("retries", 0),
        "dead_letter": dead,
        "queued": queued,
        "scheduled": scheduled,
        "in_flight": in_flight,
        "replayed": counts.get("replayed", 0),
        "deferred": counts.get("deferred", 0),
        "skipped": {k[8:]: v for k, v in counts.items() if k.startswith("skipped:")},
        "dead_letter_stored": dead_stored,
        "queued_overdue": overdue,
        "oldest_queued_s": round(max(0, now_ms - oldest[0][1]) / 1000, 3) if oldest else 0.0,
        "reconciled": counts.get("reconciled", 0),
        "erased": counts.get("erased", 0),
        "expired": counts.get("expired", 0),
    }
