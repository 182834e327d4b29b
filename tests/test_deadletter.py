"""The dead-letter store: list, show, replay (fresh attempts, new ticket, stale stays refused), purge."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from producers.producer import Producer
from producers.store import keys
from producers.store.enqueue import push_jobs
from producers.store.message import ticket_for
from worker.deadletter import DeadLetters

from conftest import TEST_ERASURE_KEY, add_fault, delivery_for, make_settings, queued_count, sandbox_requests

EVENT = {"kind": "custom_event", "type": "Order Shipped", "user": {"email": "jane@example.com"}}


def dead_letter_one(settings, producer, client, sandbox, status=400, job=EVENT) -> str:
    add_fault(sandbox, status=status, times=1)
    job_id = producer.enqueue(job)
    assert delivery_for(settings, client).run(job_id, ticket_for(job_id, 0)).startswith("dead:")
    return job_id


def test_an_entry_holds_the_whole_story(settings, producer, redis_client, sandbox):
    job_id = dead_letter_one(settings, producer, redis_client, sandbox)
    entry = DeadLetters(redis_client, settings).show(job_id)
    assert entry is not None
    assert entry["job_id"] == job_id and entry["reason"] == "rejected" and entry["status"] == 400
    assert entry["job"]["user"] == {"email": "jane@example.com"} and entry["job"]["kind"] == "custom_event"
    assert json.loads(entry["response"])["status"] == 400
    assert entry["attempts"][0]["status"] == 400 and entry["attempts"][0]["attempt"] == 1
    assert entry["first_seen"] <= entry["last_seen"]


def test_list_filters_by_reason_newest_first(redis_server, redis_client, sandbox):
    settings = make_settings(redis_server.url, sandbox.url, attentive_max_attempts=1)
    producer = Producer(settings, redis_client)
    first = dead_letter_one(settings, producer, redis_client, sandbox, 400)
    second = dead_letter_one(settings, producer, redis_client, sandbox, 503)
    store = DeadLetters(redis_client, settings)
    assert [e["job_id"] for e in store.list()] == [second, first]
    assert [e["job_id"] for e in store.list("server_error")] == [second]
    assert store.ids("rejected") == [first]


def test_replay_requeues_with_fresh_attempts_and_delivers_once(settings, producer, redis_client, sandbox):
    job_id = dead_letter_one(settings, producer, redis_client, sandbox, 400)
    redis_client.delete("attentive")
    store = DeadLetters(redis_client, settings)
    assert store.replay([job_id]) == {
        "replayed": [job_id],
        "stale": [],
        "missing": [],
        "unserved": [],
        "unserved_accounts": [],
    }
    assert store.show(job_id) is None
    assert store.replay([job_id])["missing"] == [job_id], "a second replay finds nothing to replay"
    [message] = redis_client.lrange("attentive", 0, -1)
    ticket = json.loads(message)["headers"]["id"]
    assert ticket == ticket_for(job_id, 1)
    assert delivery_for(settings, redis_client).run(job_id, ticket_for(job_id, 0)) == "skipped:stale"
    assert delivery_for(settings, redis_client).run(job_id, ticket) == "delivered"
    requests = sandbox_requests(sandbox)
    assert [r["status"] for r in requests] == [400, 200]
    assert requests[0]["body"]["externalEventId"] == requests[1]["body"]["externalEventId"]
    assert redis_client.hget(keys.STATS, "replayed") == b"1"


def test_replay_keeps_a_stale_event_out(redis_server, redis_client, sandbox):
    settings = make_settings(redis_server.url, sandbox.url)
    old = (datetime.now(UTC) - timedelta(hours=13)).isoformat()
    push_jobs(
        redis_client, settings, [("old", "custom_event", json.dumps({**EVENT, "occurredAt": old}))], TEST_ERASURE_KEY
    )
    assert delivery_for(settings, redis_client).run("old", ticket_for("old", 0)) == "dead:stale"
    assert DeadLetters(redis_client, settings).replay(["old"])["stale"] == ["old"]
    wider = make_settings(redis_server.url, sandbox.url, attentive_freshness_hours=24)
    assert DeadLetters(redis_client, wider).replay(["old"])["replayed"] == ["old"], "fresh again under a wider window"


def test_purge_deletes_for_good(settings, producer, redis_client, sandbox):
    job_id = dead_letter_one(settings, producer, redis_client, sandbox)
    store = DeadLetters(redis_client, settings)
    assert store.purge([job_id, "nope"]) == 1
    assert store.list() == [] and store.show(job_id) is None


def test_expired_entries_leave_the_index(settings, producer, redis_client, sandbox):
    job_id = dead_letter_one(settings, producer, redis_client, sandbox)
    redis_client.delete(keys.dead(job_id))  # as if its retention ran out
    store = DeadLetters(redis_client, settings)
    assert store.list() == []
    assert redis_client.zcard(keys.DEAD_INDEX) == 0


def test_producer_enqueue_many_queues_valid_and_returns_errors(producer: Producer, redis_client):
    results = producer.enqueue_many([EVENT, {"kind": "custom_event"}, EVENT])
    assert isinstance(results[0], str) and isinstance(results[2], str)
    assert "type: is required" in str(results[1]) and "user: is required" in str(results[1])
    assert queued_count(redis_client, "attentive") == 2 and redis_client.hget(keys.STATS, "enqueued") == b"2"


def test_list_and_replay_filter_by_account(redis_server, redis_client, sandbox):
    settings = make_settings(
        redis_server.url,
        sandbox.url,
        attentive_accounts='{"brand-a": {"token": "test-token"}}',
        attentive_max_attempts=1,
    )
    producer = Producer(settings, redis_client)
    theirs = dead_letter_one(settings, producer, redis_client, sandbox, 400, {**EVENT, "account": "brand-a"})
    ours = dead_letter_one(settings, producer, redis_client, sandbox, 400)
    down = dead_letter_one(settings, producer, redis_client, sandbox, 503, {**EVENT, "account": "brand-a"})
    store = DeadLetters(redis_client, settings)
    assert [e["job_id"] for e in store.list(account="brand-a")] == [down, theirs]
    assert [e["job_id"] for e in store.list(account="default")] == [ours], "a job naming no account is the default's"
    assert store.ids("rejected", account="brand-a") == [theirs]
    assert store.list(account="nobody") == []
    redis_client.delete("attentive", "attentive.brand-a")
    assert store.replay(store.ids("rejected", account="brand-a"))["replayed"] == [theirs]
    assert queued_count(redis_client, "attentive.brand-a") == 1 and queued_count(redis_client, "attentive") == 0
    assert redis_client.hget(keys.job(theirs), "account") == b"brand-a"
