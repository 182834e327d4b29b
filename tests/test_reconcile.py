"""Orphaned jobs: a job that says ``queued`` but whose broker message is gone is queued again.

The message can vanish between Redis handing it to a worker (BRPOP) and the worker's claim,
if the whole worker is killed then; nothing but the job record is left. These tests take the
message away by hand and check the reconciler's promises: an orphan comes back with a new
ticket (its old message, should it exist after all, is fenced off as stale); a job whose
message is still in the queue is left alone; one pass runs at a time.
"""

from __future__ import annotations

import json
import time

import redis

from producers.producer import Producer
from producers.store import keys
from producers.store.message import celery_message, message_template, ticket_for
from worker.counters import stats
from worker.jobstore import Claim, JobStore

from conftest import all_queued, claimed, make_settings, reconciled, sandbox_requests, wait_for

EVENT = {"kind": "custom_event", "type": "Order Shipped", "user": {"email": "jane@example.com"}}
ORPHAN_MS = 5_000


def store_for(client: redis.Redis) -> JobStore:
    return JobStore(client, "attentive", 10_000, 86_400_000, ORPHAN_MS)


def queued_at(client: redis.Redis, job_id: str) -> int:
    score = client.zscore(keys.QUEUED, job_id)
    assert score is not None, "a queued job is in the index"
    return int(score)


def tickets_in_queue(client: redis.Redis) -> list[str]:
    return [json.loads(m)["headers"]["id"] for m in client.lrange("attentive", 0, -1)]


def test_the_promoters_template_builds_the_same_message_as_the_producer():
    # The reconciler finds a job's message by its exact bytes, built from the template.
    job_id = "0" * 32
    ticket = ticket_for(job_id, 3)
    filled = message_template().replace("@JOB@", job_id).replace("@TICKET@", ticket).replace("@QUEUE@", "attentive.b")
    assert filled.replace("@KIND@", "custom_event") == celery_message(job_id, ticket, "attentive.b", "custom_event")


def test_a_queued_job_whose_message_was_lost_is_queued_again_with_a_new_ticket(producer: Producer, redis_client):
    store = store_for(redis_client)
    job_id = producer.enqueue(EVENT)
    t0 = queued_at(redis_client, job_id)
    redis_client.delete("attentive")  # the message is gone; the record says queued

    assert store.reconcile(t0 + ORPHAN_MS - 1) == (0, 0, 0), "not overdue yet"
    redis_client.delete(keys.RECONCILE_LOCK)
    assert store.reconcile(t0 + ORPHAN_MS) == (1, 0, 0)
    assert tickets_in_queue(redis_client) == [ticket_for(job_id, 1)]
    assert queued_at(redis_client, job_id) == t0, "a lost message does not make the job younger"
    assert store.claim(job_id, ticket_for(job_id, 0), t0 + ORPHAN_MS + 1) == "stale", "an old message is fenced"
    claim = claimed(store, job_id, 1, t0 + ORPHAN_MS + 2)
    assert claim.attempt == 1, "a lost message costs no attempt"
    assert redis_client.zscore(keys.QUEUED, job_id) is None, "a claimed job leaves the index"
    assert redis_client.hget(keys.STATS, "reconciled") == b"1"


def test_a_job_still_waiting_in_the_queue_is_left_alone(producer: Producer, redis_client):
    store = store_for(redis_client)
    waiting, lost = producer.enqueue(EVENT), producer.enqueue(EVENT)
    redis_client.lrem("attentive", 1, redis_client.lrange("attentive", 0, 0)[0])  # LPUSH: index 0 is the newest
    now = queued_at(redis_client, lost) + ORPHAN_MS
    assert store.reconcile(now) == (1, 1, 0)
    assert sorted(tickets_in_queue(redis_client)) == sorted([ticket_for(waiting, 0), ticket_for(lost, 1)])
    assert queued_at(redis_client, waiting) < now, "its age is kept: the index holds when it was queued"
    redis_client.delete(keys.RECONCILE_LOCK)
    assert store.reconcile(now + ORPHAN_MS - 1) == (0, 0, 0), "looked at again only after another orphan period"
    redis_client.delete(keys.RECONCILE_LOCK)
    assert store.reconcile(now + ORPHAN_MS) == (0, 2, 0), "then both are found waiting in the queue"


def test_a_promoted_message_is_recognised_as_present(producer: Producer, redis_client):
    store = store_for(redis_client)
    job_id = producer.enqueue(EVENT)
    redis_client.delete("attentive")
    claim = claimed(store, job_id, 0, 1000)
    assert store.schedule(claim, 1000, 10, [])
    assert store.promote(2000) == (1, 0)
    assert queued_at(redis_client, job_id) == 2000, "a promoted job is indexed as queued again"
    assert store.reconcile(2000 + ORPHAN_MS) == (0, 1, 0)
    assert tickets_in_queue(redis_client) == [ticket_for(job_id, 1)]


def test_a_job_deeper_than_the_scan_in_a_backlog_is_queued_again_and_runs_once(producer: Producer, redis_client):
    store = store_for(redis_client)
    deep = producer.enqueue(EVENT)
    for _ in range(5):
        producer.enqueue(EVENT)
    redis_client.zadd(keys.QUEUED, {deep: queued_at(redis_client, deep) - 1})  # the oldest, whatever the clock
    now = queued_at(redis_client, deep) + ORPHAN_MS
    # Promoted jobs sit at the consuming end, ahead of it.
    redis_client.rpush("attentive", *(celery_message(f"{i:032x}", f"{i:032x}.1", "attentive") for i in range(3)))
    assert store.reconcile(now, limit=1, scan_max=2) == (1, 0, 0)
    assert tickets_in_queue(redis_client).count(ticket_for(deep, 0)) == 1, "its old message is still there"
    assert store.claim(deep, ticket_for(deep, 0), now) == "stale", "and can no longer run it"
    assert isinstance(store.claim(deep, ticket_for(deep, 1), now), Claim)


def test_a_job_waiting_in_a_queue_nobody_consumes_keeps_its_true_age(producer: Producer, redis_client):
    """The reconciler finds the message still waiting on every pass; the job's age must still
    grow, so that `stats` and the metrics show it (issue 15: it stayed about 3 s old)."""
    store = store_for(redis_client)
    job_id = producer.enqueue(EVENT)
    t0 = int(time.time() * 1000) - 600_000  # queued ten minutes ago
    redis_client.zadd(keys.QUEUED, {job_id: t0})
    for k in range(3):
        redis_client.delete(keys.RECONCILE_LOCK)
        assert reconciled(store, t0 + (k + 1) * ORPHAN_MS)[0] == 0
    assert queued_at(redis_client, job_id) == t0
    s = stats(redis_client, producer.settings, overdue_after_ms=ORPHAN_MS)
    assert s["queued_overdue"] == 1 and s["oldest_queued_s"] >= 600


def test_the_reconciler_goes_round_the_overdue_jobs_not_the_same_oldest_ones(producer: Producer, redis_client):
    store = store_for(redis_client)
    waiting = all_queued(producer.enqueue_many([EVENT] * 30))
    time.sleep(0.005)  # queued after them, not in the same millisecond
    lost = producer.enqueue(EVENT)
    t0 = queued_at(redis_client, lost)
    redis_client.lrem("attentive", 1, redis_client.lrange("attentive", 0, 0)[0])  # the newest: the lost one's
    found: list[tuple[int, int, int]] = []
    for k in range(4):
        redis_client.delete(keys.RECONCILE_LOCK)
        found.append(reconciled(store, t0 + ORPHAN_MS + k, limit=10))
    assert [r[0] for r in found] == [0, 0, 0, 1], "ten a pass, each job once, then the one at the end"
    assert [r[1] for r in found] == [10, 10, 10, 0]
    assert all(redis_client.hget(keys.job(j), "state") == b"queued" for j in waiting)


def test_index_entries_of_jobs_that_are_no_longer_queued_are_dropped(producer: Producer, redis_client):
    store = store_for(redis_client)
    ended, running = producer.enqueue(EVENT), producer.enqueue(EVENT)
    redis_client.delete(keys.job(ended))  # e.g. a Redis restart kept the index but not the record
    redis_client.zadd(keys.QUEUED, {running: 0})
    redis_client.hset(keys.job(running), "state", "running")
    assert store.reconcile(10**13) == (0, 0, 0)
    assert redis_client.zcard(keys.QUEUED) == 0


def test_one_pass_at_a_time_across_promoters(producer: Producer, redis_client):
    first, second = store_for(redis_client), store_for(redis_client)
    producer.enqueue(EVENT)
    assert first.reconcile(10**13, lock_ms=60_000) is not None
    assert second.reconcile(10**13, lock_ms=60_000) is None


def test_stats_report_jobs_queued_past_the_threshold(producer: Producer, redis_client):
    old, new = producer.enqueue(EVENT), producer.enqueue(EVENT)
    redis_client.zadd(keys.QUEUED, {old: 1000})  # queued long ago
    s = stats(redis_client, producer.settings, overdue_after_ms=ORPHAN_MS)
    assert s["queued_overdue"] == 1
    assert s["oldest_queued_s"] > 1_000_000
    assert s["reconciled"] == 0
    store_for(redis_client).claim(old, ticket_for(old, 0), 2000)
    s = stats(redis_client, producer.settings, overdue_after_ms=ORPHAN_MS)
    assert s["queued_overdue"] == 0 and s["oldest_queued_s"] < 60
    assert redis_client.zscore(keys.QUEUED, new) is not None


def test_a_real_worker_delivers_jobs_whose_messages_were_lost_exactly_once(
    redis_server, redis_client, sandbox, start_worker
):
    settings = make_settings(redis_server.url, sandbox.url, attentive_orphan_s=2)
    producer = Producer(settings, redis_client)
    ids = [producer.enqueue({**EVENT, "type": f"Orphan {i}"}) for i in range(10)]
    redis_client.delete("attentive")  # every message lost; only the job records remain
    start_worker(settings_=settings)
    wait_for(lambda: stats(redis_client, settings)["delivered"] == 10, 60, "the orphans to be delivered")
    sent = [r["body"] for r in sandbox_requests(sandbox) if r["status"] == 200]
    assert sorted(b["type"] for b in sent) == sorted(f"Orphan {i}" for i in range(10))
    s = stats(redis_client, settings, overdue_after_ms=2000)
    assert s["reconciled"] == 10 and s["queued_overdue"] == 0 and s["queued"] == 0
    assert not any(redis_client.exists(keys.job(i)) for i in ids)
