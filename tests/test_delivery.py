"""One attempt at a time, in-process, against the real sandbox over HTTP and a real Redis.

Each dead-letter reason and the retry path are shown here; tests/test_worker_processes.py
shows them again through real ``celery worker`` processes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis

from producers.producer import Producer
from producers.store import keys, replies
from producers.store.enqueue import push_jobs
from producers.store.message import ticket_for
from worker.delivery import Delivery
from worker.sandbox.server import Sandbox

from conftest import PURCHASE, TEST_ERASURE_KEY, KindLimiter, add_fault, delivery_for, make_settings, sandbox_requests

EVENT = {"kind": "custom_event", "type": "Order Shipped", "user": {"phone": "+14155552671"}}


def run_until_done(delivery: Delivery, client: redis.Redis, job_id: str, limit: int = 10) -> list[str]:
    """Run attempts, promoting scheduled retries at once, until the job ends (bounded)."""
    outcomes: list[str] = []
    for _ in range(limit):
        ticket = client.hget(keys.job(job_id), "ticket")
        if ticket is None:
            return outcomes
        outcomes.append(delivery.run(job_id, replies.text(ticket)))
        due = client.zscore(keys.SCHEDULE, job_id)
        if due is not None:
            delivery.store.promote(int(due))
    raise AssertionError(f"job still live after {limit} attempts: {outcomes}")


def dead_entry(client: redis.Redis, job_id: str) -> dict[str, Any]:
    entry = client.get(keys.dead(job_id))
    assert entry is not None, "no dead letter"
    return dict(json.loads(entry))


def test_delivered_sends_the_attentive_body_once(settings, producer, redis_client, sandbox):
    job_id = producer.enqueue({**EVENT, "properties": {"price": 19.99}})
    assert run_until_done(delivery_for(settings, redis_client), redis_client, job_id) == ["delivered"]
    [request] = sandbox_requests(sandbox)
    assert request["path"] == "/v1/events/custom" and request["status"] == 200
    assert request["body"]["user"] == {"phone": "+14155552671"}
    assert request["body"]["properties"] == {"price": 19.99}
    assert request["body"]["externalEventId"] and request["body"]["occurredAt"].endswith("Z")
    assert "kind" not in request["body"]
    assert not redis_client.exists(keys.job(job_id))


def test_retry_then_success_keeps_the_same_external_event_id(settings, producer, redis_client, sandbox):
    add_fault(sandbox, status=503, times=2)
    job_id = producer.enqueue(EVENT)
    outcomes = run_until_done(delivery_for(settings, redis_client), redis_client, job_id)
    assert outcomes[-1] == "delivered" and len(outcomes) == 3
    assert all(o.startswith("retry_in_") for o in outcomes[:2])
    requests = sandbox_requests(sandbox)
    assert [r["status"] for r in requests] == [503, 503, 200]
    assert len({r["body"]["externalEventId"] for r in requests}) == 1
    assert redis_client.hget(keys.STATS, "retries") == b"2"


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (400, "rejected"),
        (404, "rejected"),
        (413, "rejected"),
        (422, "rejected"),
    ],
)
def test_permanent_statuses_are_dead_lettered_at_once(settings, producer, redis_client, sandbox, status, reason):
    add_fault(sandbox, status=status, times=1)
    job_id = producer.enqueue(EVENT)
    assert run_until_done(delivery_for(settings, redis_client), redis_client, job_id) == [f"dead:{reason}"]
    entry = dead_entry(redis_client, job_id)
    assert entry["reason"] == reason and entry["status"] == status
    assert entry["response"] and json.loads(entry["response"])["status"] == status
    assert entry["job"]["user"]["phone"] == "+14155552671"
    assert [a["status"] for a in entry["attempts"]] == [status]


@pytest.mark.parametrize(("status", "reason"), [(429, "rate_limited"), (500, "server_error"), (503, "server_error")])
def test_transient_statuses_retry_until_attempts_run_out(settings, producer, redis_client, sandbox, status, reason):
    add_fault(sandbox, status=status, times=10)
    job_id = producer.enqueue(EVENT)
    outcomes = run_until_done(delivery_for(settings, redis_client), redis_client, job_id)
    assert outcomes[-1] == f"dead:{reason}" and len(outcomes) == settings.attentive_max_attempts
    assert len(dead_entry(redis_client, job_id)["attempts"]) == settings.attentive_max_attempts


def test_retry_after_is_honoured(settings, producer, redis_client, sandbox):
    add_fault(sandbox, status=429, times=1, retry_after=0.75)
    job_id = producer.enqueue(EVENT)
    outcome = delivery_for(settings, redis_client).run(job_id, ticket_for(job_id, 0))
    assert outcome == "retry_in_0.8s"  # 0.75 s, as the sandbox asked


def test_network_errors_retry_then_dead_letter(redis_server, redis_client):
    settings = make_settings(redis_server.url, "http://127.0.0.1:9", attentive_max_attempts=2)
    job_id = Producer(settings, redis_client).enqueue(EVENT)
    outcomes = run_until_done(delivery_for(settings, redis_client), redis_client, job_id)
    assert outcomes[0].startswith("retry_in_") and outcomes[-1] == "dead:network_error"
    assert dead_entry(redis_client, job_id)["attempts"][0]["error"] == "network_error"


def test_a_timeout_is_a_network_error(redis_server, redis_client, sandbox):
    settings = make_settings(redis_server.url, sandbox.url, attentive_timeout_s=0.3, attentive_max_attempts=1)
    add_fault(sandbox, status=200, times=1, delay_ms=800)
    job_id = Producer(settings, redis_client).enqueue(EVENT)
    assert delivery_for(settings, redis_client).run(job_id, ticket_for(job_id, 0)) == "dead:network_error"
    assert "timeout" in dead_entry(redis_client, job_id)["detail"]


def test_a_purchase_with_no_answer_is_not_sent_again(redis_server, redis_client, sandbox):
    """The sandbox counts the purchase and answers too late: a second send would count the
    order twice (purchases carry no externalEventId), so it waits in the dead-letter queue."""
    settings = make_settings(redis_server.url, sandbox.url, attentive_timeout_s=0.3)
    add_fault(sandbox, status=200, times=1, delay_ms=800)
    job_id = Producer(settings, redis_client).enqueue(PURCHASE)
    assert delivery_for(settings, redis_client).run(job_id, ticket_for(job_id, 0)) == "dead:uncertain"
    assert "may have counted" in dead_entry(redis_client, job_id)["detail"]
    assert len(sandbox_requests(sandbox)) == 1


def test_a_purchase_that_never_left_is_retried(redis_server, redis_client):
    settings = make_settings(redis_server.url, "http://127.0.0.1:9")  # nothing listens: no connection
    job_id = Producer(settings, redis_client).enqueue(PURCHASE)
    assert delivery_for(settings, redis_client).run(job_id, ticket_for(job_id, 0)).startswith("retry_in_")


def test_which_transport_failures_may_have_counted():
    from worker.destinations.base import transport_error

    request = httpx.Request("POST", "http://127.0.0.1/v1/events/ecommerce/purchase")
    never_left = [httpx.ConnectError("x", request=request), httpx.ConnectTimeout("x", request=request)]
    maybe_left = [httpx.ReadTimeout("x", request=request), httpx.RemoteProtocolError("x", request=request)]
    assert {transport_error(e, counted=True).reason for e in never_left} == {"network_error"}
    assert {transport_error(e, counted=True).reason for e in maybe_left} == {"uncertain"}
    assert {transport_error(e, counted=False).reason for e in maybe_left} == {"network_error"}


def test_an_event_that_went_stale_in_the_queue_is_not_sent(settings, redis_client, sandbox):
    old = (datetime.now(UTC) - timedelta(hours=12, minutes=1)).isoformat()
    job = json.dumps({**EVENT, "occurredAt": old, "externalEventId": "e-1"})
    push_jobs(redis_client, settings, [("stalejob", "custom_event", job)], TEST_ERASURE_KEY)
    assert delivery_for(settings, redis_client).run("stalejob", ticket_for("stalejob", 0)) == "dead:stale"
    assert sandbox_requests(sandbox) == []
    assert "12.0 h old" in dead_entry(redis_client, "stalejob")["detail"]


def test_a_retry_that_would_land_past_the_window_is_dead_lettered_stale_now(redis_server, redis_client, sandbox):
    settings = make_settings(
        redis_server.url,
        sandbox.url,
        attentive_backoff_base_s=3600,
        attentive_backoff_max_s=7200,
        attentive_freshness_hours=0.5,
    )
    add_fault(sandbox, status=503, times=1)
    job_id = Producer(settings, redis_client).enqueue(EVENT)
    assert delivery_for(settings, redis_client).run(job_id, ticket_for(job_id, 0)) == "dead:stale"
    assert dead_entry(redis_client, job_id)["status"] == 503


def test_attributes_never_go_stale(settings, producer, redis_client, sandbox):
    job_id = producer.enqueue(
        {"kind": "custom_attributes", "user": {"email": "a@example.com"}, "properties": {"tier": "gold"}}
    )
    assert run_until_done(delivery_for(settings, redis_client), redis_client, job_id) == ["delivered"]


def test_a_job_from_an_older_producer_is_validated_again(settings, redis_client, sandbox):
    bad = json.dumps({"kind": "custom_event", "type": "Bad|Type", "user": {"phone": "+14155552671"}})
    push_jobs(redis_client, settings, [("oldjob", "custom_event", bad)], TEST_ERASURE_KEY)
    assert delivery_for(settings, redis_client).run("oldjob", ticket_for("oldjob", 0)) == "dead:invalid"
    entry = dead_entry(redis_client, "oldjob")
    assert "type: must not contain" in entry["detail"] and "+14155552671" not in entry["detail"]
    assert sandbox_requests(sandbox) == []


def test_a_poison_job_is_dead_lettered_with_a_traceback_summary_and_never_loops(settings, producer, redis_client):
    job_id = producer.enqueue(EVENT)
    redis_client.hset(keys.job(job_id), "history", "{corrupt")
    delivery = delivery_for(settings, redis_client)
    assert delivery.run(job_id, ticket_for(job_id, 0)) == "dead:crashed"
    entry = dead_entry(redis_client, job_id)
    assert entry["reason"] == "crashed" and "ValueError at delivery.py:" in entry["detail"]
    assert "+14155552671" not in entry["detail"]
    assert delivery.run(job_id, ticket_for(job_id, 0)) == "skipped:gone"


def test_a_lost_attempt_counts_and_ends_as_worker_lost(redis_server, redis_client, sandbox):
    settings = make_settings(redis_server.url, sandbox.url, attentive_max_attempts=2)
    job_id = Producer(settings, redis_client).enqueue(EVENT)
    delivery = delivery_for(settings, redis_client)
    for round_, at in ((0, 1000), (1, 100_000)):
        assert delivery.store.claim(job_id, ticket_for(job_id, round_), at)  # then the worker "dies"
        delivery.store.promote(at + 60_000)
    assert delivery.run(job_id, ticket_for(job_id, 2)) == "dead:worker_lost"
    entry = dead_entry(redis_client, job_id)
    assert [a["error"] for a in entry["attempts"]] == ["worker lost mid-delivery"]
    assert sandbox_requests(sandbox) == []


def test_a_missing_token_dead_letters_as_unauthorized_without_sending(redis_server, redis_client, sandbox):
    settings = make_settings(redis_server.url, sandbox.url, attentive_api_token=None)
    job_id = Producer(settings, redis_client).enqueue(EVENT)
    assert delivery_for(settings, redis_client).run(job_id, ticket_for(job_id, 0)) == "dead:unauthorized"
    assert sandbox_requests(sandbox) == []


def test_sandbox_fixture_is_isolated(sandbox: Sandbox):
    assert sandbox_requests(sandbox) == []


def test_a_redis_failure_mid_attempt_is_not_a_poison_job(settings, producer, redis_client):
    delivery = delivery_for(settings, redis_client)
    unreachable = redis.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.5)
    delivery.limiter = KindLimiter(unreachable, settings).limiter
    job_id = producer.enqueue(EVENT)
    assert delivery.run(job_id, ticket_for(job_id, 0)) == "skipped:redis"
    assert not redis_client.exists(keys.dead(job_id)), "a Redis blip must not dead-letter the job"
    assert redis_client.zscore(keys.LEASES, job_id) is not None, "its lease brings it back"
