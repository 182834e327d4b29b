"""Held jobs going back on their queues: a lane's jobs leave in batch messages, as fresh work does.

A paused lane (`worker.pause`) or an open circuit (`worker.circuit`) holds its jobs in the
schedule, listed in `producers.store.keys.held`. When the lane resumes or the circuit closes they are
released by `release_held`: `CHUNK` jobs per script, each script queuing them in messages of up
to `producers.store.message.MAX_BATCH` jobs per queue (`producers.store.message.batch_message`, built in the
script from its template), behind the work already queued there. Ten thousand held jobs are
then a few hundred Celery messages, not ten thousand.

A job is released only while it is still ``scheduled``: one the promoters queued meanwhile
(its hold expired), one claimed, ended, erased or expired is left as it is, so the release and
the promoters never queue one job twice. Each released job starts a new round (a new ticket),
like a promoted one. Each script is atomic; a release stopped between scripts (a lost
connection) leaves the rest held and scheduled, so the promoters queue them when their hold
expires, and running the release again queues them at once.
"""

from __future__ import annotations

import time
import uuid

import redis

from producers.store import keys, lua
from producers.store.message import (
    JOB_PLACEHOLDER,
    KIND_PLACEHOLDER,
    MAX_BATCH,
    QUEUE_PLACEHOLDER,
    batch_message,
    message_template,
)
from worker.jobstore import REQUEUE_LIBRARY

CHUNK = 2 * MAX_BATCH
"""Held jobs released per script: two batch messages of one queue, about 3.5 ms of Redis time
on the 2-core machine under load (53 us a job); 10,000 held jobs are 157 scripts, under a second."""
SUMMARY_PLACEHOLDER = "@SUMMARY@"
TICKETS_PLACEHOLDER = "@TICKETS@"
_TICKET_GLUE = '\\", \\"'
"""Between two tickets in a batch message's body, which is JSON text inside a JSON string."""
TTL_FALLBACK_MS = 86_400_000
"""A batch message's copy for the reconciler lives as long as its longest-lived job; this long
if none has an expiry (every record is written with one)."""


def batch_template() -> str:
    """`batch_message` with placeholders: the batch id (as a job id), the queue, the tickets
    (joined by `_TICKET_GLUE`) and Flower's summary (``(N jobs: kind xN, ...)``)."""
    one = batch_message(JOB_PLACEHOLDER, [TICKETS_PLACEHOLDER], QUEUE_PLACEHOLDER, [KIND_PLACEHOLDER])
    summary = f"(1 jobs: {KIND_PLACEHOLDER} x1)"
    if one.count(summary) != 1:
        raise AssertionError("producers.store.message.batch_message changed its argsrepr: update worker.held")
    return one.replace(summary, SUMMARY_PLACEHOLDER)


# The jobs of one chunk of a held set still scheduled (`message` comes from the job store's
# requeue functions); others (queued by a promoter, ended, erased) are only dropped from the set:
# the promoter that pops an expired one from the schedule counts it.
# KEYS: held set, schedule, queued index
# ARGV: now_ms, chunk, single-job template, batch template, key prefix, fallback queue, max batch,
#       batch id prefix, ticket glue, ttl fallback ms
_RELEASE_HELD = lua.script("worker", "held_release_held", requires=(REQUEUE_LIBRARY,))


class HeldRelease:
    """Releases held lanes through one Redis client."""

    def __init__(self, client: redis.Redis, fallback_queue: str = "attentive") -> None:
        """``fallback_queue``: where a record that names no queue goes (``ATTENTIVE_QUEUE``;
        every record written since queues were per account names its own)."""
        self.client = client
        self.fallback_queue = fallback_queue
        self._batch_template = batch_template()

    def release(self, lane: str, now_ms: int, chunk: int = CHUNK, budget_s: float = 60.0) -> int:
        """Queue the jobs held in ``lane`` (``ACCOUNT|DESTINATION``), oldest held first, in batch
        messages: how many were queued. Stops when the set is empty, after as many scripts as
        it held chunks at the start (jobs held meanwhile wait for their hold to expire), or
        after ``budget_s``. Raises ``redis.RedisError`` when Redis cannot be reached (what the
        scripts before queued stays queued)."""
        key = keys.held(lane)
        scripts = -(-int(self.client.zcard(key)) // chunk)
        deadline = time.monotonic() + budget_s
        batch_prefix = "batch-" + uuid.uuid4().hex  # the script numbers its messages after it
        released = 0
        for n in range(scripts):
            queued, taken = _RELEASE_HELD(
                self.client,
                keys=[key, keys.SCHEDULE, keys.QUEUED],
                args=[
                    now_ms,
                    chunk,
                    message_template(),
                    self._batch_template,
                    keys.PREFIX,
                    self.fallback_queue,
                    MAX_BATCH,
                    f"{batch_prefix}-{n}",
                    _TICKET_GLUE,
                    TTL_FALLBACK_MS,
                ],
            )
            released += int(queued)
            if int(taken) < chunk or time.monotonic() >= deadline:
                break
        return released
