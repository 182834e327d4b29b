"""Queue a job when the Django transaction around it commits: Celery's ``delay_on_commit``, for jobs.

    from django.db import transaction
    import producers

    with transaction.atomic():
        order = Order.objects.create(...)
        producers.enqueue_on_commit({"kind": "purchase", ...})

A job queued inside a transaction that later rolls back would tell Attentive about an order
that does not exist; one queued after the commit cannot. The job is validated at the call, so
a bad one raises `InvalidJob` inside the view, where it can still be answered; it is queued
when the transaction commits, and never if it rolls back. Outside a transaction (autocommit)
Django runs the hook, and so queues the job, at once.
"""

from __future__ import annotations

from typing import Any

from producers.producer import Producer


def enqueue_on_commit(producer: Producer, job: Any, *, using: str | None = None, robust: bool = False) -> str:
    """Validate ``job`` with ``producer`` now and queue it when ``using``'s transaction commits.

    Returns the job id the job will have. Raises `InvalidJob` at once, naming every broken rule;
    nothing is registered then. The queueing itself runs in Django's commit hook: a
    ``redis.RedisError`` there propagates from the commit (after the data is committed) unless
    ``robust`` is true, in which case Django logs it and runs the remaining hooks.
    """
    from django.db import transaction

    prepared = producer.prepare(job)

    # A named function, not a partial: Django names a robust hook's failure by its __qualname__.
    def queue_committed_job() -> None:
        producer.push([prepared])

    transaction.on_commit(queue_committed_job, using=using, robust=robust)
    return prepared.job_id
