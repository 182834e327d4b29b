"""The asyncio producer (`producers.async_producer`, `producers.aenqueue`) against the real test Redis:
the same records, messages, counters and errors as the sync calls, and no thread pool."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
import redis
from pydantic import SecretStr

import producers
from producers.async_producer import AsyncProducer
from producers.producer import Producer
from producers.settings import Settings
from producers.store import keys
from producers.store.message import celery_message, ticket_for

from conftest import env_for, queued_count

T = TypeVar("T")
EVENT = {"kind": "custom_event", "type": "Order Shipped", "user": {"phone": "(415) 555-2671"}, "properties": {"n": 1}}
INVALID = {"kind": "custom_event", "type": "x", "user": {"phone": "555"}}
IDENTIFY = {"type": "identify", "userId": "u-1", "traits": {"email": "jane@example.com", "plan": "gold"}}
TRACK = {"type": "track", "event": "Signed Up", "userId": "u-1", "traits": {"email": "jane@example.com"}}
NO_IDENTIFIER = {"type": "track", "event": "Signed Up"}
IDENTITY = {"kind": "identity", "clientUserId": "c-1", "email": "jane@example.com"}
WAITER = {"kind": "custom_event", "type": "Visited", "user": {"externalIdentifiers": {"clientUserId": "c-1"}}}
"""An event known only by the id IDENTITY links: queued with it, it waits for it."""
STAMPED = ("occurredAt", "externalEventId")
"""Job fields stamped at enqueue, different for every call."""
PER_JOB = ("ticket", "first_seen", "batch", "after")
"""Record fields made of the job id or the time."""


def run_async(settings: Settings, use: Callable[[AsyncProducer], Awaitable[T]]) -> T:
    """``use(producer)`` on a fresh event loop with an AsyncProducer built from ``settings``."""

    async def main() -> T:
        producer = AsyncProducer(settings)
        try:
            return await use(producer)
        finally:
            await producer.aclose()

    return asyncio.run(main())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def snapshot(client: redis.Redis) -> dict[str, Any]:
    """What a push leaves in Redis, without what differs from call to call (ids, times, hashes)."""
    records = []
    for key in client.scan_iter(match=keys.job("*")):
        raw = {_text(k): _text(v) for k, v in client.hgetall(key).items()}
        job = json.loads(raw.pop("job"))
        for name in STAMPED:
            job.pop(name, None)
        for name in PER_JOB:
            raw.pop(name, None)
        records.append(json.dumps({"record": raw, "job": job}, sort_keys=True))
    return {
        "records": sorted(records),
        "stats": client.hgetall(keys.STATS),
        "queued index": client.zcard(keys.QUEUED),
        "waiting index": client.zcard(keys.WAITING),
        "queued messages": queued_count(client),
        "keys": client.dbsize(),
    }


def test_aenqueue_stores_the_record_and_message_the_sync_enqueue_does(settings, redis_client):
    job_id = run_async(settings, lambda p: p.enqueue(EVENT))
    record = redis_client.hgetall(keys.job(job_id))
    ticket = ticket_for(job_id, 0)
    assert record[b"ticket"].decode() == ticket and record[b"state"] == b"queued"
    assert redis_client.lrange("attentive", 0, -1) == [
        celery_message(job_id, ticket, "attentive", "custom_event").encode()
    ]
    from_async = snapshot(redis_client)

    redis_client.flushdb()
    Producer(settings, redis_client).enqueue(EVENT)
    assert snapshot(redis_client) == from_async
    assert from_async["stats"] == {b"enqueued": b"1"} and from_async["queued messages"] == 1


def test_an_invalid_job_raises_the_sync_error_and_nothing_is_sent(settings, redis_client):
    with pytest.raises(producers.InvalidJob) as sync_error:
        Producer(settings, redis_client).enqueue(INVALID)
    # Redis unreachable: validation fails before any connection, so InvalidJob still comes first.
    unreachable = settings.model_copy(update={"redis_url": SecretStr("redis://127.0.0.1:9/0")})
    with pytest.raises(producers.InvalidJob) as async_error:
        run_async(unreachable, lambda p: p.enqueue(INVALID))
    assert async_error.value.problems == sync_error.value.problems
    assert [p.field for p in async_error.value.problems] == ["user.phone"]
    assert redis_client.dbsize() == 0


def test_unreachable_redis_raises_the_redis_error_the_sync_call_does(settings):
    unreachable = settings.model_copy(update={"redis_url": SecretStr("redis://127.0.0.1:9/0")})
    with pytest.raises(redis.ConnectionError):
        run_async(unreachable, lambda p: p.enqueue(EVENT))


def test_an_event_waits_for_its_identity_job_as_with_the_sync_call(settings, redis_client):
    jobs = [IDENTITY, WAITER]
    assert len(run_async(settings, lambda p: p.enqueue_many(jobs))) == 2
    async_snapshot = snapshot(redis_client)
    redis_client.flushdb()
    Producer(settings, redis_client).enqueue_many(jobs)
    assert snapshot(redis_client) == async_snapshot
    assert async_snapshot["waiting index"] == 1 and async_snapshot["queued messages"] == 1


def test_aenqueue_many_lines_results_up_with_the_input_like_the_sync_call(settings, redis_client):
    jobs = [EVENT, INVALID, {**EVENT, "type": "Order Delivered"}, "not json"]
    from_async = run_async(settings, lambda p: p.enqueue_many(jobs))
    async_snapshot = snapshot(redis_client)
    redis_client.flushdb()
    from_sync = Producer(settings, redis_client).enqueue_many(jobs)

    def shape(results: list[str | producers.InvalidJob]) -> list[Any]:
        return [r.problems if isinstance(r, producers.InvalidJob) else "id" for r in results]

    assert shape(from_async) == shape(from_sync)
    assert shape(from_async)[0] == "id" and shape(from_async)[2] == "id"
    assert snapshot(redis_client) == async_snapshot and async_snapshot["queued messages"] == 2


@pytest.mark.parametrize("message", [TRACK, IDENTIFY, NO_IDENTIFIER], ids=["track", "identify", "skipped"])
def test_aenqueue_segment_queues_what_the_sync_call_queues(settings, redis_client, message):
    ids = run_async(settings, lambda p: p.enqueue_segment(message))
    async_snapshot = snapshot(redis_client)
    redis_client.flushdb()
    assert len(Producer(settings, redis_client).enqueue_segment(message)) == len(ids)
    assert snapshot(redis_client) == async_snapshot
    if message is IDENTIFY:
        # An identity job and custom attributes: the identity job's marker makes it the
        # MULTI/EXEC path (identity ordering), not the single script.
        assert len(ids) == 2 and len(list(redis_client.scan_iter(match=keys.identity("*")))) == 1
    if message is NO_IDENTIFIER:
        assert ids == [] and async_snapshot["stats"] == {b"skipped:no_identifier": b"1"}


def test_the_enqueue_script_is_loaded_again_after_a_redis_script_flush(settings, redis_client):
    async def twice(producer: AsyncProducer) -> list[str]:
        first = await producer.enqueue(EVENT)
        redis_client.script_flush()  # what a Redis restart does to loaded scripts (NOSCRIPT)
        return [first, await producer.enqueue(EVENT)]

    ids = run_async(settings, twice)
    assert all(redis_client.exists(keys.job(i)) for i in ids) and queued_count(redis_client) == 2


class _NoThreadPool(ThreadPoolExecutor):
    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the async producer handed work to a thread pool")


def test_no_thread_pool_and_no_thread_is_used(settings, redis_client):
    threads_before = threading.active_count()

    async def main(producer: AsyncProducer) -> list[str]:
        # asyncio.to_thread and run_in_executor(None, ...) both go through the default executor.
        asyncio.get_running_loop().set_default_executor(_NoThreadPool(max_workers=1))
        ids = [await producer.enqueue(EVENT)]
        ids += await producer.enqueue_segment(IDENTIFY)
        assert threading.active_count() == threads_before
        return ids

    assert len(run_async(settings, main)) == 3


def test_many_concurrent_aenqueues_on_one_loop(settings, redis_client):
    async def main(producer: AsyncProducer) -> list[str]:
        return await asyncio.gather(*(producer.enqueue({**EVENT, "properties": {"n": n}}) for n in range(200)))

    ids = run_async(settings, main)
    assert len(set(ids)) == 200 and queued_count(redis_client) == 200
    assert redis_client.hget(keys.STATS, "enqueued") == b"200"


def test_module_functions_keep_one_producer_per_event_loop(settings, redis_client, monkeypatch):
    for name, value in env_for(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(producers, "_default", None)
    monkeypatch.setattr(producers, "_async_defaults", {})

    async def main() -> tuple[list[str], AsyncProducer]:
        ids = [await producers.aenqueue(EVENT)]
        [*more] = await producers.aenqueue_many([EVENT, INVALID])
        ids += [r for r in more if isinstance(r, str)]
        ids += await producers.aenqueue_segment(TRACK)
        producer = producers.default_async_producer()
        assert producers.default_async_producer() is producer
        await producer.aclose()
        return ids, producer

    first_ids, first = asyncio.run(main())
    second_ids, second = asyncio.run(main())
    # A redis.asyncio client cannot cross loops: the second loop got its own producer, and the
    # first (its loop closed) was dropped.
    assert first is not second and list(producers._async_defaults.values()) == [second]
    assert len(first_ids) == len(second_ids) == 3
    assert all(redis_client.exists(keys.job(i)) for i in first_ids + second_ids)
    with pytest.raises(RuntimeError):
        producers.default_async_producer()  # no running loop
