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
and identify messages to Attentive calls (see `producers.segment.mapping`).

Async code (FastAPI, Starlette, async Django views) awaits `aenqueue`, `aenqueue_many` and
`aenqueue_segment` instead: the same validation, script, results and errors, on
``redis.asyncio`` (`producers.async_producer`). Django code that writes to the database first
calls `enqueue_on_commit`, which validates at once and queues when the transaction commits.

Importing this package is cheap: no httpx, no Celery, no connection until the first enqueue.
``producers.__version__`` is the installed distribution's version (its metadata).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from producers.errors import InvalidJob, Problem, RelayError
from producers.producer import Producer
from producers.settings import Settings

if TYPE_CHECKING:
    import asyncio

    from producers.async_producer import AsyncProducer

__all__ = [
    "InvalidJob",
    "Problem",
    "Producer",
    "RelayError",
    "Settings",
    "__version__",
    "aclose",
    "aenqueue",
    "aenqueue_many",
    "aenqueue_segment",
    "enqueue",
    "enqueue_many",
    "enqueue_on_commit",
    "enqueue_segment",
]
DISTRIBUTION = "attentive-relay"

_default: Producer | None = None
_lock = threading.Lock()
_async_defaults: dict[asyncio.AbstractEventLoop, AsyncProducer] = {}


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


def default_async_producer() -> AsyncProducer:
    """The running event loop's async producer, built from the environment on first use there.

    A ``redis.asyncio`` connection belongs to the loop that opened it, so each loop gets its own
    producer (and client); those of loops closed since are dropped. Raises ``RuntimeError``
    outside a running event loop.
    """
    import asyncio

    from producers.async_producer import AsyncProducer

    loop = asyncio.get_running_loop()
    settings = default_producer().settings  # before taking _lock: default_producer takes it too
    with _lock:
        found = _async_defaults.get(loop)
        if found is None:
            for closed in [other for other in _async_defaults if other.is_closed()]:
                del _async_defaults[closed]
            found = _async_defaults[loop] = AsyncProducer(settings)
    return found


async def aclose() -> None:
    """Close the running event loop's default async client: an app's shutdown hook (FastAPI's
    lifespan, Starlette's on_shutdown). An `aenqueue` after it on this loop opens a new one."""
    import asyncio

    loop = asyncio.get_running_loop()
    with _lock:
        found = _async_defaults.pop(loop, None)
    if found is not None:
        await found.aclose()


async def aenqueue(job: Any) -> str:
    """`enqueue`, awaited on ``redis.asyncio``. See `AsyncProducer.enqueue`."""
    return await default_async_producer().enqueue(job)


async def aenqueue_many(jobs: Any) -> list[str | InvalidJob]:
    """`enqueue_many`, awaited on ``redis.asyncio``. See `AsyncProducer.enqueue_many`."""
    return await default_async_producer().enqueue_many(jobs)


async def aenqueue_segment(message: Any) -> list[str]:
    """`enqueue_segment`, awaited on ``redis.asyncio``. See `AsyncProducer.enqueue_segment`."""
    return await default_async_producer().enqueue_segment(message)


def enqueue_on_commit(job: Any, *, using: str | None = None, robust: bool = False) -> str:
    """Validate ``job`` now; queue it when the Django transaction commits. See `producers.on_commit`."""
    from producers.on_commit import enqueue_on_commit as on_commit

    return on_commit(default_producer(), job, using=using, robust=robust)


def __getattr__(name: str) -> Any:
    # Read on first use, not at import: importlib.metadata costs a few milliseconds.
    if name == "__version__":
        from importlib.metadata import version

        return version(DISTRIBUTION)
    raise AttributeError(f"module 'producers' has no attribute {name!r}")
