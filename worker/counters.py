"""The counters behind `attentive-relay stats`.

Every job is counted once when enqueued (or replayed) and once when it ends, as delivered or
as dead-lettered under its reason; ``retries`` counts scheduled retries. So at rest
``enqueued + replayed == delivered + sum(dead_letter.values())``.
"""

from __future__ import annotations

from typing import Any

import redis

from producers import keys
from producers.errors import REASONS


def stats(client: redis.Redis, queue: str) -> dict[str, Any]:
    """Counters and current depths, as `attentive-relay stats --json` prints them."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.STATS)
    pipe.llen(queue)
    pipe.zcard(keys.SCHEDULE)
    pipe.zcard(keys.LEASES)
    pipe.zcard(keys.DEAD_INDEX)
    raw, queued, scheduled, in_flight, dead_stored = pipe.execute()
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
    }
