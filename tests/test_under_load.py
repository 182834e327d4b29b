"""The guarantees at a slow API and a large backlog, with real workers (issue 15).

- A purchase is never sent after its lease is gone: one threads-pool worker, 12 brands with
  64 purchases each, an API that answers after 4 s and a 15 s lease. Before the lease fence
  (`worker.lease`), 704 of 768 such orders reached the API twice.
- One brand never waits for another: the default account's purchases back up behind a 6 s
  API; brand B's custom events, queued afterwards, reach the API within 1 s.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import redis

from producers.producer import Producer
from worker.counters import stats
from worker.sandbox.server import Sandbox

from conftest import finished, make_settings, sandbox_requests, wait_for

BRANDS = 12
PER_BRAND = 64


def purchase(brand: int, i: int, account: str | None) -> dict:
    job = {
        "kind": "purchase",
        "user": {"phone": "+14155552671"},
        "orderId": f"order-{brand}-{i}",
        "items": [{"productId": "p1", "productVariantId": "v1", "price": [{"value": 19.99, "currency": "USD"}]}],
    }
    return {**job, "account": account} if account else job


def tokens(n: int) -> dict[str, dict[str, str]]:
    return {f"brand-{b}": {"token": f"tok-brand-{b}-secret"} for b in range(1, n)}


def test_a_slow_api_never_gets_a_purchase_twice(redis_server, redis_client: redis.Redis, start_worker):
    accounts = tokens(BRANDS)
    with Sandbox(port=0, token=None, rate=1000, latency_ms=4000) as sandbox:
        settings = make_settings(
            redis_server.url,
            sandbox.url,
            attentive_accounts=json.dumps(accounts),
            attentive_lease_s=15.0,
            attentive_timeout_s=5.0,
        )
        producer = Producer(settings, redis_client)
        for b in range(BRANDS):
            account = None if b == 0 else f"brand-{b}"
            assert all(
                isinstance(r, str) for r in producer.enqueue_many([purchase(b, i, account) for i in range(PER_BRAND)])
            )
        start_worker(settings_=settings, concurrency=24, pool="threads")
        total = BRANDS * PER_BRAND
        wait_for(lambda: finished(redis_client, settings) == total, 150, "every purchase to end", interval=0.5)
        requests = sandbox_requests(sandbox)
    accepted = Counter(r["body"]["orderId"] for r in requests if r["status"] == 200)
    twice = {order: n for order, n in accepted.items() if n > 1}
    assert not twice, f"{len(twice)} of {total} orders accepted more than once"
    assert len(accepted) == total
    s = stats(redis_client, settings)
    assert s["delivered"] == total and sum(s["dead_letter"].values()) == 0 and s["in_flight"] == 0


def test_one_brand_never_waits_behind_another_s_slow_api(redis_server, redis_client: redis.Redis, start_worker):
    with Sandbox(port=0, token=None, rate=1000, latency_ms=6000) as sandbox:
        settings = make_settings(
            redis_server.url,
            sandbox.url,
            attentive_accounts=json.dumps({"brand-b": {"token": "tok-brand-b-secret"}}),
            attentive_lease_s=60.0,
            attentive_timeout_s=10.0,
        )
        producer = Producer(settings, redis_client)
        producer.enqueue_many([purchase(0, i, None) for i in range(1000)])
        start_worker(settings_=settings, concurrency=24, pool="threads")
        wait_for(lambda: len(sandbox_requests(sandbox)) >= 100, 30, "the slow brand to be sending")
        time.sleep(2)  # every task slot and the slow brand's threads are busy by now
        queued_at = time.time()
        producer.enqueue_many(
            [
                {"kind": "custom_event", "type": "B", "user": {"phone": "+14155552671"}, "account": "brand-b"}
                for _ in range(40)
            ]
        )
        arrived = wait_for(
            lambda: (
                (r := [x for x in sandbox_requests(sandbox) if (x["body"] or {}).get("type") == "B"])
                and len(r) == 40
                and r
            ),
            30,
            "brand B's 40 events to reach the API",
        )
    waited = max(r["at"] for r in arrived) - queued_at
    assert waited < 1.0, f"brand B's last event reached the API {waited:.1f} s after it was queued"
