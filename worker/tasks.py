"""The Celery tasks. Thin on purpose: the work is in `worker.delivery.Delivery`.

A task claims its message's jobs and hands them to the sender threads, then returns: it
never waits for an API, so a slow brand holds no task slot (see `Delivery.start`). Its
result, which Flower shows, says what became of each job at that point: ``sending``, or an
outcome already reached (``skipped:stale``, ``deferred``, ``dead:invalid`` ...). Each job's
final outcome is in the logs, the counters and the dead-letter store.
"""

from __future__ import annotations

from collections import Counter

import redis
from celery import Task
from celery.exceptions import Reject

from producers.store.message import BATCH_TASK_NAME, MAX_BATCH, TASK_NAME, job_of
from worker.app import app, runtime
from worker.delivery import Pending
from worker.ended import Ended


def _summary(started: list[Ended | Pending]) -> str:
    counts = Counter(str(s) if isinstance(s, Ended) else "sending" for s in started)
    return ", ".join(f"{outcome} {n}" for outcome, n in sorted(counts.items()))


@app.task(name=TASK_NAME, bind=True, acks_late=True, ignore_result=True)
def deliver(self: Task, job_id: str) -> str:
    """Attempt delivery of ``job_id``; the message's task id is its ticket (see producers.store.message)."""
    try:
        [started] = runtime().delivery.start([(job_id, self.request.id)])
    except redis.RedisError as exc:
        # Redis blinked before the job was claimed: hand the message back, don't lose it.
        raise Reject(f"redis unavailable ({type(exc).__name__})", requeue=True) from None
    return str(started) if isinstance(started, Ended) else "sending"


@app.task(name=BATCH_TASK_NAME, bind=True, acks_late=True, ignore_result=True)
def deliver_batch(self: Task, tickets: list[str]) -> str:
    """Attempt the jobs of one batch message (see producers.store.message.batch_message); the message's
    task id is the batch id. Returns what became of them at once, for Flower."""
    pairs = [(job_of(ticket), ticket) for ticket in list(tickets)[:MAX_BATCH]]
    try:
        started = runtime().delivery.start(pairs, self.request.id)
    except redis.RedisError as exc:
        raise Reject(f"redis unavailable ({type(exc).__name__})", requeue=True) from None
    return _summary(started)
