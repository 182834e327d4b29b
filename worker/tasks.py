"""The Celery task. Thin on purpose: the work is in `worker.delivery.Delivery`."""

from __future__ import annotations

import redis
from celery import Task
from celery.exceptions import Reject

from producers.queue import BATCH_TASK_NAME, TASK_NAME
from worker.app import app, runtime


@app.task(name=TASK_NAME, bind=True, acks_late=True, ignore_result=True)
def deliver(self: Task, job_id: str) -> str:
    """Attempt delivery of ``job_id``; the message's task id is its ticket (see producers.queue)."""
    try:
        return runtime().delivery.run(job_id, self.request.id)
    except redis.RedisError as exc:
        # Redis blinked before the attempt was recorded: hand the message back, don't lose it.
        raise Reject(f"redis unavailable ({type(exc).__name__})", requeue=True) from None


@app.task(name=BATCH_TASK_NAME, bind=True, acks_late=True, ignore_result=True)
def deliver_batch(self: Task, tickets: list[str]) -> str:
    """Attempt the jobs of one batch message (see producers.queue.batch_message); the message's
    task id is the batch id. Returns how many ended each way, for Flower."""
    try:
        counts = runtime().delivery.run_batch(self.request.id, list(tickets))
    except redis.RedisError as exc:
        raise Reject(f"redis unavailable ({type(exc).__name__})", requeue=True) from None
    return ", ".join(f"{outcome} {n}" for outcome, n in sorted(counts.items()))
