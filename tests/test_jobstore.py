"""The job's state machine in Redis: fencing by ticket, exactly one outcome, promote and reap."""

from __future__ import annotations

import json

import redis

from producers.producer import Producer
from producers.store import keys
from producers.store.message import ticket_for
from worker.jobstore import JobStore

from conftest import claimed, queued_count

EVENT = {"kind": "custom_event", "type": "Order Shipped", "user": {"email": "jane@example.com"}}


def store_for(client: redis.Redis, lease_ms: int = 10_000, orphan_ms: int = 5_000) -> JobStore:
    return JobStore(client, "attentive", lease_ms, 86_400_000, orphan_ms)


def queued_messages(client: redis.Redis) -> list[dict]:
    return [json.loads(m) for m in client.lrange("attentive", 0, -1)]


def test_enqueue_stores_the_job_and_queues_a_message_carrying_only_its_id(producer: Producer, redis_client):
    job_id = producer.enqueue(EVENT)
    record = redis_client.hgetall(keys.job(job_id))
    assert record[b"state"] == b"queued" and record[b"ticket"] == ticket_for(job_id, 0).encode()
    [message] = queued_messages(redis_client)
    assert message["headers"]["id"] == ticket_for(job_id, 0)
    assert message["headers"]["task"] == "attentive.deliver"
    assert json.loads(message["body"])[0] == [job_id]
    raw = redis_client.lrange("attentive", 0, -1)[0].decode()
    assert "jane@example.com" not in raw
    assert redis_client.hget(keys.STATS, "enqueued") == b"1"


def test_only_the_current_ticket_claims_and_only_once(producer: Producer, redis_client):
    store = store_for(redis_client)
    job_id = producer.enqueue(EVENT)
    assert store.claim(job_id, ticket_for(job_id, 7), 1000) == "stale"
    claim = claimed(store, job_id, 0, 1000)
    assert claim.attempt == 1
    assert store.claim(job_id, ticket_for(job_id, 0), 1001) == "busy"
    assert store.delivered(claim, 1002)
    assert store.claim(job_id, ticket_for(job_id, 0), 1003) == "gone"
    assert not store.delivered(claim, 1004), "a second outcome for the same attempt must be refused"
    assert redis_client.hget(keys.STATS, "delivered") == b"1"


def test_a_retry_waits_in_the_schedule_not_in_the_broker_and_is_promoted_once(producer, redis_client):
    store = store_for(redis_client)
    job_id = producer.enqueue(EVENT)
    redis_client.delete("attentive")
    claim = claimed(store, job_id, 0, 1000)
    assert store.schedule(claim, 1000, 5000, [{"attempt": 1, "status": 503}])
    assert redis_client.zscore(keys.SCHEDULE, job_id) == 6000
    assert queued_count(redis_client, "attentive") == 0
    assert store.promote(5999) == (0, 0)
    assert store.promote(6000) == (1, 0)
    assert store.promote(6001) == (0, 0), "promotion happens once however many promoters run"
    [message] = queued_messages(redis_client)
    assert message["headers"]["id"] == ticket_for(job_id, 1)
    assert store.claim(job_id, ticket_for(job_id, 0), 6002) == "stale"
    again = claimed(store, job_id, 1, 6003)
    assert again.attempt == 2 and again.history == [{"attempt": 1, "status": 503}]


def test_an_expired_lease_is_reaped_with_a_new_ticket_and_marked_lost(producer, redis_client):
    store = store_for(redis_client, lease_ms=1000)
    job_id = producer.enqueue(EVENT)
    redis_client.delete("attentive")
    claim = claimed(store, job_id, 0, 1000)
    assert store.promote(1999) == (0, 0)
    assert store.promote(2000) == (0, 1)
    assert not store.delivered(claim, 2001), "the lost attempt's late outcome is discarded"
    retaken = claimed(store, job_id, 1, 2002)
    assert retaken.lost_at_ms == 2000 and retaken.attempt == 2


def test_dead_letter_moves_the_job_with_a_retention(producer, redis_client):
    store = store_for(redis_client)
    job_id = producer.enqueue(EVENT)
    claim = claimed(store, job_id, 0, 1000)
    assert store.dead_letter(claim, 1000, "rejected", {"job_id": job_id, "reason": "rejected"})
    assert not redis_client.exists(keys.job(job_id))
    assert json.loads(redis_client.get(keys.dead(job_id)))["reason"] == "rejected"
    assert 0 < redis_client.pttl(keys.dead(job_id)) <= 86_400_000
    assert redis_client.hget(keys.STATS, "dead:rejected") == b"1"


def test_deferring_for_a_rate_limit_slot_gives_the_attempt_back(producer, redis_client):
    store = store_for(redis_client)
    job_id = producer.enqueue(EVENT)
    redis_client.delete("attentive")
    claim = claimed(store, job_id, 0, 1000)
    assert claim.attempt == 1
    assert store.defer(claim, 1000, due_ms=4500, slot_ms=5000)
    assert redis_client.zscore(keys.SCHEDULE, job_id) == 4500
    assert store.promote(4500) == (1, 0)
    again = claimed(store, job_id, 1, 4600)
    assert again.attempt == 1 and again.slot_ms == 5000
    assert redis_client.hget(keys.STATS, "deferred") == b"1" and redis_client.hget(keys.STATS, "retries") is None
