"""What a web app imports to send events and attributes to Attentive.

    import producers
    job_id = producers.enqueue({
        "kind": "custom_event", "type": "Order Shipped",
        "user": {"phone": "(415) 555-2671"}, "properties": {"carrier": "UPS"},
    })

`enqueue` validates against Attentive's rules, stamps ``occurredAt`` and
``externalEventId`` when missing, and queues the job in Redis in one atomic step. It raises
`InvalidJob` (a ``ValueError``) naming every broken rule and queues nothing then.

Web apps that speak Segment can call `enqueue_segment(message)` instead; it maps track, page
and identify messages to Attentive calls (see `producers.segment`).

Importing this package is cheap: no httpx, no Celery, no connection until the first enqueue.
"""

from __future__ import annotations

import threading
from typing import Any

from producers.errors import InvalidJob, Problem, RelayError
from producers.producer import Producer
from producers.settings import Settings

__all__ = [
    "InvalidJob",
    "Problem",
    "Producer",
    "RelayError",
    "Settings",
    "enqueue",
    "enqueue_many",
    "enqueue_segment",
]

_default: Producer | None = None
_lock = threading.Lock()


def default_producer() -> Producer:
    """The process-wide producer, built from the environment on first use."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                _default = Producer()
    return _default


def enqueue(job: Any) -> str:
    """Validate and queue one job; return its job id. See `Producer.enqueue`."""
    return default_producer().enqueue(job)


def enqueue_segment(message: Any) -> list[str]:
    """Map a Segment message to jobs and queue them; return their ids. See `Producer.enqueue_segment`."""
    return default_producer().enqueue_segment(message)


def enqueue_many(jobs: Any) -> list[str | InvalidJob]:
    """Queue many jobs in one round trip. See `Producer.enqueue_many`."""
    return default_producer().enqueue_many(jobs)
