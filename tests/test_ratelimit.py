"""The shared rate limiter: GCRA slots in Redis, and real workers holding Attentive's limit."""

from __future__ import annotations

import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from producers.producer import Producer
from producers.settings import Settings
from producers.store import keys
from producers.store.message import ticket_for, tickets_in
from worker.counters import stats
from worker.delivery import Delivery
from worker.destinations import Destinations
from worker.destinations.transport import StdlibTransport
from worker.ratelimit import RateLimiter

from conftest import TOKEN, KindLimiter, add_fault, all_queued, delivery_for, make_settings, sandbox_requests, wait_for


def limiter(redis_server, redis_client, **overrides) -> KindLimiter:
    return KindLimiter(redis_client, make_settings(redis_server.url, **overrides))


def test_slots_are_spaced_at_the_aimed_rate(redis_server, redis_client):
    rl = limiter(redis_server, redis_client, attentive_rate_limit=100, attentive_rate_headroom=0.5)
    assert rl.rate("custom_event") == 50
    waits = [rl.reserve("custom_event") for _ in range(5)]
    assert waits[0] == 0
    gaps = [b - a for a, b in itertools.pairwise(waits)]
    assert all(0.015 < g <= 0.02 for g in gaps), gaps  # 20 ms apart, less the time between calls


def test_published_and_configured_limits(redis_server, redis_client):
    rl = limiter(redis_server, redis_client, attentive_rate_headroom=1.0, attentive_rate_limits={"purchase": 30})
    assert rl.rate("identity") == 10 and rl.rate("purchase") == 30 and rl.rate("custom_event") == 150


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ATTENTIVE_RATE_LIMIT", "120")
    monkeypatch.setenv("ATTENTIVE_RATE_LIMITS", '{"identity": 5}')
    settings = Settings()
    assert settings.attentive_rate_limit == 120 and settings.attentive_rate_limits == {"identity": 5}


def test_endpoints_and_tokens_have_separate_buckets(redis_server, redis_client):
    rl = limiter(redis_server, redis_client)
    other = limiter(redis_server, redis_client, attentive_api_token="another-token")
    rl.reserve("identity")
    assert rl.reserve("identity") > 0.05
    assert rl.reserve("custom_event") == 0 and other.reserve("identity") == 0


def test_back_off_holds_the_whole_bucket_and_keys_hide_the_token(redis_server, redis_client):
    rl = limiter(redis_server, redis_client)
    rl.back_off("custom_event", 2.0)
    assert 1.9 < rl.reserve("custom_event") <= 2.0
    [key] = redis_client.keys(keys.PREFIX + "rate:*")
    assert TOKEN.encode() not in key and b"{" in key


def test_a_send_sees_another_worker_s_back_off_through_one_read_per_period(redis_server, redis_client):
    """A send that waited asks whether another worker backed the bucket off meanwhile. 100
    sends of one process in one period make one round trip between them, not 100 (at full
    pace that was a third of a process's round trips); a back-off is seen once the view is
    older than the period, and stays seen until it ends."""
    settings = make_settings(redis_server.url)
    here, there = KindLimiter(redis_client, settings), KindLimiter(redis_client, settings)
    here.limiter = RateLimiter(redis_client, settings.attentive_rate_headroom, holds_fresh_s=0.2)
    bucket = here.bucket("custom_event")

    def reads() -> int:
        stats = redis_client.info("commandstats")
        return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("exists", "pttl"))

    before = reads()
    with ThreadPoolExecutor(8) as pool:
        seen = list(pool.map(lambda _: here.limiter.held(bucket, ask_redis=True), range(100)))
    assert seen == [False] * 100 and reads() - before == 1
    assert not here.limiter.held(bucket, ask_redis=False)

    there.back_off("custom_event", 1.0)
    time.sleep(0.25)
    assert here.limiter.held(bucket, ask_redis=True), "another worker's back-off voids the slot"
    assert not here.limiter.held(bucket, ask_redis=False), "a short wait trusts this process's own knowledge"
    after_seen = reads()
    time.sleep(0.3)  # past the period: the hold's end is known, so no new read is needed to keep it
    assert here.limiter.held(bucket, ask_redis=True)
    time.sleep(0.6)
    assert not here.limiter.held(bucket, ask_redis=True), "the hold has ended"
    assert reads() - after_seen == 1


class HeldUp(StdlibTransport):
    """A busy process: every request thread is held up 150 ms after the delivery's last check,
    before the request's first byte."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        time.sleep(0.15)
        return super().handle_request(request)


def test_a_send_held_up_past_its_slot_in_a_crowded_bucket_never_leaves(redis_server, redis_client, sandbox):
    """Late sends in a crowded bucket bunch up into one second past Attentive's count (the
    identity endpoint's 10/s drew 429s so in a saturated process): the transport stops each
    request that would leave more than `LATE_SLOT_S` after its slot, and after `LATE_TRIES`
    slots the job is parked, its attempt not counted. (Another worker holds the next three
    slots, so each slot after them has sends on both sides.) A send alone in its bucket
    still goes."""
    settings = make_settings(redis_server.url, sandbox.url)
    store = delivery_for(settings, redis_client).store
    limiter = KindLimiter(redis_client, settings).limiter
    delivery = Delivery(settings, Destinations(settings, HeldUp(5.0)), store, limiter, rand=lambda: 0.5)
    producer = Producer(settings, redis_client)
    ids = all_queued(
        producer.enqueue_many(
            [{"kind": "identity", "clientUserId": f"c-{i}", "email": f"p{i}@example.com"} for i in range(6)]
        )
    )
    [message] = [json.loads(m) for m in redis_client.lrange("attentive", 0, -1)]
    KindLimiter(redis_client, settings).limiter.reserve_many(KindLimiter(redis_client, settings).bucket("identity"), 3)
    assert delivery.run_batch(message["headers"]["id"], tickets_in(json.dumps(message))) == {"deferred": 6}
    assert sandbox_requests(sandbox) == []
    assert {redis_client.hget(keys.job(i), "attempts") for i in ids} == {b"0"}, "no attempt was spent"

    alone = producer.enqueue({"kind": "custom_event", "type": "T", "user": {"email": "a@example.com"}})
    assert delivery.run(alone, ticket_for(alone, 0)) == "delivered"
    assert len(sandbox_requests(sandbox)) == 1


def test_workers_share_one_limit_and_never_draw_a_429(redis_server, redis_client, sandbox, start_worker):
    """Four worker processes, a sandbox enforcing 50/s: no 429s, and every job delivered."""
    settings = make_settings(redis_server.url, sandbox.url, attentive_rate_limit=50)
    httpx.post(f"{sandbox.url}/__sandbox/config", json={"rate": 50}).raise_for_status()

    producer = Producer(settings, redis_client)
    producer.enqueue_many(
        [{"kind": "custom_event", "type": f"Burst {i}", "user": {"email": "a@example.com"}} for i in range(200)]
    )
    for worker in [start_worker(f"w{n}", concurrency=1, settings_=settings, wait_ready=0) for n in range(4)]:
        worker.ready()
    wait_for(lambda: stats(redis_client, settings)["delivered"] == 200, 60, "all deliveries", 0.25)
    requests = sandbox_requests(sandbox)
    assert [r["status"] for r in requests].count(429) == 0
    per_second: dict[int, int] = {}
    for r in requests:
        per_second[int(r["at"])] = per_second.get(int(r["at"]), 0) + 1
    assert max(per_second.values()) <= 50


def test_a_backlogged_endpoint_does_not_hold_up_the_others(redis_server, redis_client, sandbox, start_worker):
    settings = make_settings(redis_server.url, sandbox.url)

    producer = Producer(settings, redis_client)
    user = {"email": "a@example.com"}
    producer.enqueue_many([{"kind": "identity", "clientUserId": f"c{i}", **user} for i in range(100)])
    producer.enqueue_many([{"kind": "custom_event", "type": f"E{i}", "user": user} for i in range(300)])
    start_worker(concurrency=2, settings_=settings)
    wait_for(lambda: stats(redis_client, settings)["delivered"] >= 360, 60, "the events and some identities")
    requests = sandbox_requests(sandbox)
    identity = sorted(r["at"] for r in requests if r["path"].startswith("/v1/identity"))
    events = sorted(r["at"] for r in requests if r["path"] == "/v1/events/custom")

    assert len(events) == 300
    assert events[-1] < identity[50], "custom events must not wait behind the identity backlog"
    assert [r["status"] for r in requests].count(429) == 0
    assert stats(redis_client, settings)["deferred"] > 0


def test_a_429_pushes_back_the_whole_bucket(redis_server, redis_client, sandbox):
    settings = make_settings(redis_server.url, sandbox.url)
    delivery = delivery_for(settings, redis_client)
    delivery.limiter = KindLimiter(redis_client, settings).limiter
    add_fault(sandbox, status=429, times=1, retry_after=2)
    job_id = Producer(settings, redis_client).enqueue(
        {"kind": "custom_event", "type": "x", "user": {"email": "a@example.com"}}
    )
    assert delivery.run(job_id, ticket_for(job_id, 0)).startswith("retry_in_")
    assert 1.8 < KindLimiter(redis_client, settings).reserve("custom_event") <= 2.0, (
        "every worker now waits for the bucket"
    )


def test_workers_back_off_together_after_a_429(redis_server, redis_client, sandbox, start_worker):
    settings = make_settings(redis_server.url, sandbox.url, attentive_rate_limit=20)
    for worker in [start_worker(name, concurrency=1, settings_=settings, wait_ready=0) for name in ("a", "b")]:
        worker.ready()
    add_fault(sandbox, status=429, times=1, retry_after=2)
    Producer(settings, redis_client).enqueue_many(
        [{"kind": "custom_event", "type": f"T{i}", "user": {"email": "a@example.com"}} for i in range(30)]
    )
    wait_for(lambda: stats(redis_client, settings)["delivered"] == 30, 60, "all deliveries", 0.25)
    requests = sorted(sandbox_requests(sandbox), key=lambda r: r["at"])
    [throttled] = [r for r in requests if r["status"] == 429]
    quiet = [r for r in requests if throttled["done"] + 0.5 < r["at"] < throttled["done"] + 1.8]
    assert quiet == [], "no worker sends while the bucket is held"
