"""Identity before the events that need it (`producers.store.ordering`): in-process against the
sandbox and a real Redis, then with real workers and an identity call that fails twice."""

from __future__ import annotations

import time

import redis

from producers.producer import Producer
from producers.settings import Settings
from producers.store import keys, replies
from producers.store.message import job_of, tickets_in
from worker.delivery import Delivery
from worker.sandbox.server import Sandbox

from conftest import (
    add_fault,
    delivery_for,
    finished,
    job_state,
    make_settings,
    reconciled,
    sandbox_requests,
    wait_for,
)

IDENTITY = {"kind": "identity", "clientUserId": "shopify-7182391234567", "email": "jane.doe@example.com"}
BY_ID = {"externalIdentifiers": {"clientUserId": "shopify-7182391234567"}}
EVENT = {"kind": "custom_event", "type": "Order Shipped", "user": BY_ID}
IDENTITY_PATH = "/v1/identity-resolution/user-identifiers"


def queued_ids(client: redis.Redis, queue: str = "attentive") -> list[str]:

    return [job_of(t) for m in client.lrange(queue, 0, -1) for t in tickets_in(m)]


def run(delivery: Delivery, client: redis.Redis, job_id: str) -> str:
    ticket = client.hget(keys.job(job_id), "ticket")
    assert ticket is not None, "the job's record is gone"
    return delivery.run(job_id, replies.text(ticket))


def test_an_event_known_only_by_an_id_waits_for_the_pending_identity_job(settings, producer, redis_client):
    identity = producer.enqueue(IDENTITY)
    event = producer.enqueue(EVENT)
    assert job_state(redis_client, event) == "waiting"
    assert queued_ids(redis_client) == [identity], "the waiting event has no broker message"

    assert run(delivery_for(settings, redis_client), redis_client, identity) == "delivered"
    assert job_state(redis_client, event) == "queued"
    # (the identity job's own message is still there: no broker consumed it in this test)
    assert queued_ids(redis_client) == [identity, event], "the identity job's end queued it"
    assert redis_client.zcard(keys.WAITING) == 0 and not redis_client.exists(keys.waiters(identity))


def test_a_dead_lettered_identity_job_releases_its_waiters_too(settings, producer, redis_client, sandbox):
    add_fault(sandbox, status=400, path=IDENTITY_PATH)
    identity = producer.enqueue(IDENTITY)
    event = producer.enqueue(EVENT)
    assert run(delivery_for(settings, redis_client), redis_client, identity) == "dead:rejected"
    assert job_state(redis_client, event) == "queued"


def test_only_events_that_need_the_link_wait(settings, producer, redis_client):
    producer.enqueue(IDENTITY)
    with_phone = producer.enqueue({**EVENT, "user": {**BY_ID, "phone": "+14155552671"}})
    other_id = producer.enqueue({**EVENT, "user": {"externalIdentifiers": {"clientUserId": "someone-else"}}})
    attributes = producer.enqueue({"kind": "custom_attributes", "user": BY_ID, "properties": {"tier": "gold"}})
    assert job_state(redis_client, with_phone) == "queued", "a phone number needs no link"
    assert job_state(redis_client, other_id) == "queued", "another customer never waits"
    assert job_state(redis_client, attributes) == "waiting"


def test_custom_identifiers_are_links_too(settings, producer, redis_client):
    custom = [{"name": "loyaltyId", "value": "L-42"}]
    producer.enqueue({"kind": "identity", "customIdentifiers": custom, "phone": "+14155552671"})
    event = producer.enqueue({**EVENT, "user": {"externalIdentifiers": {"customIdentifiers": custom}}})
    assert job_state(redis_client, event) == "waiting"


def test_an_identity_job_already_ended_holds_nothing(settings, producer, redis_client):
    identity = producer.enqueue(IDENTITY)
    run(delivery_for(settings, redis_client), redis_client, identity)
    assert job_state(redis_client, producer.enqueue(EVENT)) == "queued"


def test_the_link_is_per_account(redis_server, redis_client, sandbox):
    settings = make_settings(redis_server.url, sandbox.url, attentive_accounts='{"brand-b": {"token": "tok-b"}}')
    producer = Producer(settings, redis_client)
    producer.enqueue(IDENTITY)
    other_account = producer.enqueue({**EVENT, "account": "brand-b"})
    assert job_state(redis_client, other_account) == "queued"


def test_an_identity_job_in_the_same_batch_comes_first(settings, producer, redis_client):
    identity, event = producer.enqueue_many([IDENTITY, EVENT])
    assert job_state(redis_client, event) == "waiting"
    assert redis_client.hget(keys.job(event), "after").decode() == identity


def test_markers_never_name_the_id(settings, producer, redis_client):
    producer.enqueue(IDENTITY)
    producer.enqueue(EVENT)
    names = b" ".join(redis_client.keys("*"))
    assert b"shopify" not in names and b"7182391234567" not in names
    assert len(redis_client.keys(keys.identity("*"))) == 1


def test_a_waiter_whose_identity_job_vanished_is_released_by_the_reconciler(settings, producer, redis_client):
    identity = producer.enqueue(IDENTITY)
    event = producer.enqueue(EVENT)
    redis_client.delete(keys.job(identity))  # erased, or expired before it ended
    store = delivery_for(settings, redis_client).store
    now_ms = int(time.time() * 1000)
    assert store.reconcile(now_ms + store.orphan_ms) == (0, 0, 1)
    assert job_state(redis_client, event) == "queued"
    assert event in queued_ids(redis_client)


def test_a_waiter_whose_identity_job_is_still_pending_stays(settings, producer, redis_client):
    producer.enqueue(IDENTITY)
    event = producer.enqueue(EVENT)
    store = delivery_for(settings, redis_client).store
    now_ms = int(time.time() * 1000)
    assert reconciled(store, now_ms + store.orphan_ms)[2] == 0
    assert job_state(redis_client, event) == "waiting"


def test_with_real_workers_the_event_goes_after_an_identity_call_that_failed_twice(
    redis_server, redis_client, sandbox: Sandbox, start_worker
):
    settings: Settings = make_settings(redis_server.url, sandbox.url)
    add_fault(sandbox, status=503, times=2, path=IDENTITY_PATH)
    producer = Producer(settings, redis_client)
    identity = producer.enqueue(IDENTITY)
    event = producer.enqueue({**EVENT, "properties": {"order": "o-1"}})
    others = producer.enqueue_many([{**EVENT, "user": {"email": f"c{i}@example.com"}} for i in range(5)])
    start_worker(settings_=settings)
    wait_for(lambda: finished(redis_client, settings) == 7, 60, "every job to end")

    requests = sandbox_requests(sandbox)
    identity_calls = [r for r in requests if r["path"] == IDENTITY_PATH]
    assert [r["status"] for r in identity_calls] == [503, 503, 202]
    [event_call] = [r for r in requests if r["body"].get("properties") == {"order": "o-1"}]
    assert event_call["status"] == 200
    assert event_call["at"] > identity_calls[-1]["done"], "the event went only after the link existed"
    other_calls = [r for r in requests if r["body"].get("user", {}).get("email", "").startswith("c")]
    assert len(other_calls) == 5
    assert all(r["at"] < identity_calls[-1]["done"] for r in other_calls), "other customers never waited"
    assert not redis_client.exists(keys.job(identity)) and not redis_client.exists(keys.job(event))
    assert len(others) == 5
