"""Prometheus metrics from Redis counters, served by `attentive-relay metrics`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from producers.producer import Producer
from producers.store.message import ticket_for
from worker.local.processes import free_port
from worker.ops.metrics import RelayCollector

from conftest import TOKEN, add_fault, delivery_for, make_settings, wait_for

EVENT = {"kind": "custom_event", "type": "M", "user": {"email": "a@example.com"}}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_metrics_endpoint_reports_backlog_outcomes_and_reasons(settings, producer, redis_client, sandbox):
    add_fault(sandbox, status=400, times=1)
    delivery = delivery_for(settings, redis_client)
    first, second, _ = (
        producer.enqueue({"kind": "custom_event", "type": "M", "user": {"email": "a@example.com"}}) for _ in range(3)
    )
    assert delivery.run(first, ticket_for(first, 0)) == "dead:rejected"
    assert delivery.run(second, ticket_for(second, 0)) == "delivered"
    producer.enqueue_segment({"type": "track", "event": "anon", "anonymousId": "x"})
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "metrics", "--port", str(port)],
        env={**os.environ, "REDIS_URL": settings.redis_url.get_secret_value()},
        stdout=subprocess.DEVNULL,
    )
    try:
        text = wait_for(lambda: _get(f"http://127.0.0.1:{port}/metrics"), 20, "the metrics endpoint")
    finally:
        proc.terminate()
        proc.wait(10)
    got = samples(text)
    assert got[("attentive_relay_queue_depth", ())] == 1, "two of the three jobs have ended"
    assert got[("attentive_relay_queue_messages", ())] == 3  # those two were run by hand: no broker took them
    assert got[("attentive_relay_enqueued_total", ())] == 3
    assert got[("attentive_relay_delivered_total", ())] == 1
    assert got[("attentive_relay_dead_lettered_total", (("reason", "rejected"),))] == 1
    assert got[("attentive_relay_dead_lettered_total", (("reason", "stale"),))] == 0
    assert got[("attentive_relay_skipped_total", (("reason", "no_identifier"),))] == 1
    assert got[("attentive_relay_dead_letter_stored", ())] == 1
    assert ("attentive_relay_rate_limit_waits_total", ()) in got
    assert got[("attentive_relay_queued_overdue", ())] == 0, "nothing has waited 60 s"
    assert 0 <= got[("attentive_relay_oldest_queued_seconds", ())] < 60
    assert got[("attentive_relay_reconciled_total", ())] == 0


def _get(url: str) -> str | None:
    try:
        return httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return None


def test_metrics_break_the_backlog_and_outcomes_down_by_account(redis_server, redis_client, sandbox):
    accounts = json.dumps({"brand-a": {"token": TOKEN}})
    settings = make_settings(redis_server.url, sandbox.url, attentive_accounts=accounts)
    producer = Producer(settings, redis_client)
    delivery = delivery_for(settings, redis_client)
    a1, a2 = (producer.enqueue({**EVENT, "account": "brand-a"}) for _ in range(2))
    producer.enqueue(EVENT)
    assert delivery.run(a1, ticket_for(a1, 0)) == "delivered"
    add_fault(sandbox, status=400, times=1)
    assert delivery.run(a2, ticket_for(a2, 0)) == "dead:rejected"
    registry = CollectorRegistry()
    registry.register(RelayCollector(redis_client, settings))
    got = samples(generate_latest(registry).decode())
    assert got[("attentive_relay_account_queue_depth", (("account", "brand-a"),))] == 0, "both ended"
    assert got[("attentive_relay_account_queue_depth", (("account", "default"),))] == 1
    assert got[("attentive_relay_account_scheduled", (("account", "brand-a"),))] == 0
    assert got[("attentive_relay_account_delivered_total", (("account", "brand-a"),))] == 1
    assert got[("attentive_relay_account_delivered_total", (("account", "default"),))] == 0
    assert got[("attentive_relay_account_dead_lettered_total", (("account", "brand-a"), ("reason", "rejected")))] == 1
    assert got[("attentive_relay_account_dead_lettered_total", (("account", "default"), ("reason", "rejected")))] == 0
    assert got[("attentive_relay_queue_depth", ())] == 1, "the unlabelled series stay, over every account"
    assert got[("attentive_relay_queue_messages", ())] == 3, "the two run by hand were never taken off the queue"
    assert got[("attentive_relay_delivered_total", ())] == 1
    assert got[("attentive_relay_waiting", ())] == 0
