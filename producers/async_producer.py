"""The asyncio producer: ``await producers.aenqueue(job)`` from FastAPI, Starlette or async Django.

Everything before Redis is the sync producer's own code: validation and Segment mapping
(`Producer.prepare`, `prepare_segment`, `prepare_many`) and the enqueue plan with its Lua script
and arguments (`producers.store.enqueue.plan_push`, `add_push`). Only the last step differs: the commands
go out on a ``redis.asyncio`` client, awaited on the caller's event loop, with no thread pool in
between. So the job records, the messages, the counters and the errors are the sync calls'.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from producers.errors import InvalidJob
from producers.prepared import PreparedJob
from producers.producer import Producer, count_skipped
from producers.segment import mapping as segment
from producers.settings import Settings
from producers.store import erasure, keys
from producers.store.enqueue import STORE, STORE_KEYS, add_push, plan_push

if TYPE_CHECKING:
    import redis.asyncio


class AsyncProducer:
    """Queues jobs from async code. Safe for many tasks at once on one event loop.

    ``client`` is a ``redis.asyncio`` client; by default one is built from ``settings.redis_url``
    on first use. A redis.asyncio client's connections belong to the event loop that opened
    them: use one AsyncProducer per loop (`producers.aenqueue` keeps one per loop for you).
    """

    def __init__(self, settings: Settings | None = None, client: redis.asyncio.Redis | None = None) -> None:
        # Validation and mapping only: this Producer's own (sync) Redis client is never opened.
        self._preparer = Producer(settings)
        self.settings = self._preparer.settings
        self._client = client
        self._owns_client = client is None
        self._erasure_key: bytes | None = None

    @property
    def client(self) -> redis.asyncio.Redis:
        if self._client is None:
            from producers.store.connection import from_settings

            self._client = from_settings(self.settings, asyncio=True)
        return self._client

    async def enqueue(self, job: Any) -> str:
        """Validate ``job`` (dict, JSON text or model), queue it, and return its job id.

        Raises `InvalidJob` (a ``ValueError``) listing every problem, whatever ``job`` holds;
        nothing is queued then, and Redis is not contacted. Raises ``redis.RedisError`` when
        Redis cannot be reached; nothing is queued then either.
        """
        prepared = self._preparer.prepare(job)
        await self.push([prepared])
        return prepared[0]

    async def enqueue_many(self, jobs: Iterable[Any]) -> list[str | InvalidJob]:
        """Queue every valid job in one round trip; invalid ones come back as their `InvalidJob`,
        in the input's order. Only ``redis.RedisError`` (nothing queued) is raised."""
        results, ready = self._preparer.prepare_many(jobs)
        await self.push(ready)
        return results

    async def enqueue_segment(self, message: Any, account: str | None = None) -> list[str]:
        """Map one Segment message to jobs and queue them together; return their ids (none for a
        skipped message, counted under ``skipped:<reason>``). Raises `InvalidJob` naming the
        field when the message cannot make a valid Attentive call; nothing is queued then."""
        prepared = self._preparer.prepare_segment(message, account)
        if isinstance(prepared, segment.Skip):
            await self.push([], {prepared.reason: 1})
            return []
        await self.push(prepared)
        return [job_id for job_id, _, _ in prepared]

    async def push(self, prepared: Sequence[PreparedJob], skipped: Mapping[str, int] | None = None) -> None:
        """Queue prepared jobs atomically, then count skipped Segment messages by reason.

        The sync `Producer.push` without ``once`` (the collector's duplicate markers). Raises
        ``redis.RedisError`` when Redis cannot be reached; no job is queued then.
        """
        plan = plan_push(self.settings, prepared, await self._erasure_secret())
        if plan.store_args is not None:
            await STORE.acall(self.client, STORE_KEYS, plan.store_args)
        elif plan.entries:
            async with self.client.pipeline(transaction=True) as pipe:
                add_push(pipe, self.settings, plan)
                await pipe.execute()
        if skipped:
            async with self.client.pipeline(transaction=False) as pipe:
                count_skipped(pipe, skipped)
                await pipe.execute()

    async def _erasure_secret(self) -> bytes:
        """`producers.store.erasure.secret`, awaited: the configured key, or the one kept in Redis."""
        if self._erasure_key is None:
            configured = erasure.configured_secret(self.settings)
            if configured is None:
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.set(keys.ERASURE_KEY, secrets.token_hex(32), nx=True)
                    pipe.get(keys.ERASURE_KEY)
                    _, stored = await pipe.execute()
                configured = bytes(stored)
            self._erasure_key = configured
        return self._erasure_key

    async def aclose(self) -> None:
        """Close the connections of the client this producer built; a client passed in is the caller's."""
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None
