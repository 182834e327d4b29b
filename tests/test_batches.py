"""Several jobs per Celery message (`producers.store.message.batch_message`): queued together, claimed
in one script, attempted overlapped, found by the reconciler, and fenced like single jobs."""

from __future__ import annotations

import json
import time

import redis

from producers.producer import Producer
from producers.store import keys
from producers.store.message import BATCH_TASK_NAME, MAX_BATCH, TASK_NAME, job_of, ticket_for, tickets_in
from worker.sandbox.server import Sandbox

from conftest import add_fault, delivery_for, finished, make_settings, sandbox_requests, wait_for

PHONE = "+14155552671"
EMAIL = "jane.doe@example.com"


def event(i: int, **extra) -> dict:
    return {"kind": "custom_event", "type": "Order Shipped", "user": {"phone": PHONE, "email": EMAIL}, **extra}


def messages(client: redis.Redis, queue: str = "attentive") -> list[dict]:
    return [json.loads(m) for m in reversed(client.lrange(queue, 0, -1))]  # oldest first


def test_jobs_queued_together_go_in_batches_that_carry_only_tickets(producer: Producer, redis_client):
    ids = producer.enqueue_many([event(i) for i in range(2 * MAX_BATCH + 6)])
    found = messages(redis_client)
    assert [m["headers"]["task"] for m in found] == [BATCH_TASK_NAME] * 3
    tickets = [tickets_in(json.dumps(m)) for m in found]
    assert [len(t) for t in tickets] == [MAX_BATCH, MAX_BATCH, 6]
    assert [job_of(t) for batch in tickets for t in batch] == ids
    for m in found:
        raw = json.dumps(m)
        assert PHONE not in raw and EMAIL not in raw and "Order Shipped" not in raw
        assert m["headers"]["argsrepr"].endswith("jobs: custom_event x" + str(len(tickets_in(raw))) + ")")
        batch_id = m["headers"]["id"]
        assert redis_client.get(keys.batch(batch_id)) == json.dumps(m, separators=(",", ":")).encode()
        assert {redis_client.hget(keys.job(job_of(t)), "batch") for t in tickets_in(raw)} == {batch_id.encode()}


def test_a_job_alone_gets_its_own_message(producer: Producer, redis_client):
    job_id = producer.enqueue(event(0))
    [message] = messages(redis_client)
    assert message["headers"]["task"] == TASK_NAME and message["headers"]["id"] == ticket_for(job_id, 0)
    assert redis_client.hget(keys.job(job_id), "batch") is None


def test_each_account_s_jobs_are_batched_on_its_own_queue(redis_server, redis_client):
    settings = make_settings(redis_server.url, attentive_accounts='{"brand-b": {"token": "tok-b"}}')
    Producer(settings, redis_client).enqueue_many([event(i, account="brand-b" if i % 2 else None) for i in range(6)])
    assert [len(tickets_in(json.dumps(m))) for m in messages(redis_client)] == [3]
    assert [len(tickets_in(json.dumps(m))) for m in messages(redis_client, "attentive.brand-b")] == [3]


def test_a_queue_s_jobs_are_batched_kind_by_kind(producer: Producer, redis_client):
    """Mixed kinds queued together go in batches of one kind where they can (a worker sends a
    batch as one group per lane): 40 events and 24 purchases, interleaved, make a batch of 32
    events, one of 8 events and 24 purchases, never six small groups per batch."""
    purchase = {
        "kind": "purchase",
        "user": {"phone": PHONE},
        "items": [{"productId": "p", "productVariantId": "v", "price": [{"value": 1}]}],
    }
    jobs = [event(i) if i % 8 < 5 else purchase for i in range(64)]
    ids = producer.enqueue_many(jobs)
    kinds = {job_id: job["kind"] for job_id, job in zip(ids, jobs, strict=True)}
    batches = [[kinds[job_of(t)] for t in tickets_in(json.dumps(m))] for m in messages(redis_client)]
    assert batches == [["custom_event"] * 32, ["custom_event"] * 8 + ["purchase"] * 24]
    events = [job_id for job_id in ids if kinds[job_id] == "custom_event"]
    assert [job_of(t) for m in messages(redis_client) for t in tickets_in(json.dumps(m))][:40] == events


def test_a_batch_is_claimed_once_and_attempted_overlapped(settings, producer, redis_client, sandbox: Sandbox):
    sandbox.state.latency_ms = 300
    ids = producer.enqueue_many([event(i) for i in range(8)])
    [message] = messages(redis_client)
    batch_id, tickets = message["headers"]["id"], tickets_in(json.dumps(message))
    delivery = delivery_for(settings, redis_client)
    assert delivery.run_batch(batch_id, tickets) == {"delivered": 8}
    assert not redis_client.exists(keys.batch(batch_id)), "a taken batch is no longer looked for"
    assert delivery.run_batch(batch_id, tickets) == {"skipped:gone": 8}, "a second copy finds nothing to do"
    requests = sandbox_requests(sandbox)
    assert len(requests) == 8 and finished(redis_client, settings) == len(ids)
    first_done = min(r["done"] for r in requests)
    assert sum(r["at"] < first_done for r in requests) >= 4, "the sends overlapped"


def test_a_batch_attempt_keeps_each_job_s_own_outcome(settings, producer, redis_client, sandbox: Sandbox):
    add_fault(sandbox, status=503, times=1, type="Flaky")
    add_fault(sandbox, status=400, times=1, type="Refused")
    jobs = [event(0), {**event(1), "type": "Flaky"}, {**event(2), "type": "Refused"}, {**event(3), "occurredAt": 5}]
    results = producer.enqueue_many(jobs)
    assert isinstance(results[3], ValueError)
    [message] = messages(redis_client)
    counts = delivery_for(settings, redis_client).run_batch(message["headers"]["id"], tickets_in(json.dumps(message)))
    assert counts == {"delivered": 1, "retry": 1, "dead:rejected": 1}
    assert redis_client.zcard(keys.SCHEDULE) == 1 and redis_client.zcard(keys.DEAD_INDEX) == 1


def test_a_lost_batch_message_is_found_missing_and_each_job_queued_again(settings, producer, redis_client):
    ids = producer.enqueue_many([event(i) for i in range(5)])
    store = delivery_for(settings, redis_client).store
    now_ms = int(time.time() * 1000)
    assert store.reconcile(now_ms + store.orphan_ms) == (0, 5, 0), "the batch still waits in the queue"
    redis_client.delete("attentive", keys.RECONCILE_LOCK)  # a worker took the message and died
    assert store.reconcile(now_ms + 2 * store.orphan_ms) == (5, 0, 0)
    requeued = messages(redis_client)
    assert [m["headers"]["task"] for m in requeued] == [TASK_NAME] * 5
    assert sorted(m["headers"]["id"] for m in requeued) == sorted(ticket_for(i, 1) for i in ids)
    assert all(redis_client.hget(keys.job(i), "batch") is None for i in ids)


def test_with_real_workers_every_job_of_many_batches_is_delivered_once(
    redis_server, redis_client, sandbox: Sandbox, start_worker
):
    settings = make_settings(redis_server.url, sandbox.url)
    ids = Producer(settings, redis_client).enqueue_many([event(i, properties={"n": i}) for i in range(300)])
    start_worker(settings_=settings, concurrency=2)
    wait_for(lambda: finished(redis_client, settings) == 300, 60, "every job to end")
    sent = [r["body"]["properties"]["n"] for r in sandbox_requests(sandbox) if r["status"] == 200]
    assert sorted(sent) == list(range(300)) and len(ids) == 300
    assert not redis_client.keys(keys.batch("*"))


def test_a_poison_job_in_a_batch_is_dead_lettered_alone(settings, producer, redis_client, sandbox: Sandbox):
    ids = producer.enqueue_many([event(i) for i in range(4)])
    redis_client.hset(keys.job(ids[1]), "history", "not json")  # a corrupt record: the attempt raises
    [message] = messages(redis_client)
    counts = delivery_for(settings, redis_client).run_batch(message["headers"]["id"], tickets_in(json.dumps(message)))
    assert counts == {"delivered": 3, "dead:crashed": 1}
    entry = json.loads(redis_client.get(keys.dead(ids[1])))
    assert entry["reason"] == "crashed" and PHONE not in entry["detail"] and EMAIL not in entry["detail"]
    assert len(sandbox_requests(sandbox)) == 3
