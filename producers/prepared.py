"""A job validated and stamped, ready to queue: what `producers.producer.Producer.prepare`
returns and `producers.store.enqueue.push_jobs` takes."""

from __future__ import annotations

from typing import NamedTuple


class PreparedJob(NamedTuple):
    """One valid job as it will be stored. A tuple, so ``job_id, kind, job_json = prepared`` works."""

    job_id: str
    """The id `producers.store.enqueue.new_job_id` gave it: the key of its record in Redis."""
    kind: str
    """Its ``kind``, one of `producers.job.validation.KINDS`: the queue message carries it."""
    job_json: str
    """The job as stored and replayed (`producers.job.validation.job_json`)."""
