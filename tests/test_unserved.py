"""Jobs nobody serves: an account removed from ATTENTIVE_ACCOUNTS (or a queue no worker
consumes) leaves jobs ``queued`` on a queue no worker takes from. Their true age shows in
`stats` and the metrics, and `stats` names the account (tests/test_requeue.py moves them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from prometheus_client.registry import CollectorRegistry

from producers.producer import Producer
from producers.settings import Settings
from worker.counters import stats
from worker.ops.metrics import RelayCollector

from conftest import TOKEN, all_queued, job_state, make_settings, wait_for

WITH_X = json.dumps({"brand-x": {"token": TOKEN}, "brand-b": {"token": TOKEN}})
"""The accounts the jobs were queued under."""
WITHOUT_X = json.dumps({"brand-b": {"token": TOKEN}})
"""The accounts after brand-x was removed: what the workers and the operator's CLI now read."""
EVENT = {"kind": "custom_event", "type": "Order Shipped", "user": {"email": "jane.doe@example.com"}}


def relay(args: list[str], settings: Settings, accounts: str = WITHOUT_X) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url.get_secret_value(),
        "ATTENTIVE_ACCOUNTS": accounts,
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def both(redis_url: str, base_url: str = "http://127.0.0.1:9", **overrides: object) -> tuple[Settings, Settings]:
    """(settings the jobs were queued under, settings after brand-x was removed)."""
    return (
        make_settings(redis_url, base_url, attentive_accounts=WITH_X, **overrides),
        make_settings(redis_url, base_url, attentive_accounts=WITHOUT_X, **overrides),
    )


def test_stats_name_the_account_of_queued_jobs_no_configured_account_serves(redis_server, redis_client):
    before, after = both(redis_server.url)
    producer = Producer(before, redis_client)
    producer.enqueue_many([{**EVENT, "account": "brand-x"}] * 3)
    producer.enqueue({**EVENT, "account": "brand-b"})
    s = stats(redis_client, after)
    assert s["queued"] == 4 and s["queued_unserved"] == 3
    assert s["unserved"] == {
        "brand-x": {
            "queued": 3,
            "scheduled": 0,
            "queues": ["attentive.brand-x"],
            "oldest_queued_s": s["unserved"]["brand-x"]["oldest_queued_s"],
        }
    }
    assert s["accounts"]["brand-x"]["served"] is False and s["accounts"]["brand-b"]["served"] is True
    assert s["accounts"]["brand-x"]["queued"] == 3
    assert stats(redis_client, before)["queued_unserved"] == 0, "with brand-x configured, nothing is unserved"


def test_a_queue_the_settings_no_longer_name_is_unserved_too(redis_server, redis_client):
    producer = Producer(make_settings(redis_server.url), redis_client)
    producer.enqueue(EVENT)
    renamed = make_settings(redis_server.url, attentive_queue="relay")  # ATTENTIVE_QUEUE changed
    s = stats(redis_client, renamed)
    assert s["queued_unserved"] == 1
    assert s["unserved"]["default"]["queues"] == ["attentive"]


def test_the_metrics_show_unserved_jobs_by_account(redis_server, redis_client):
    before, after = both(redis_server.url)
    Producer(before, redis_client).enqueue_many([{**EVENT, "account": "brand-x"}] * 2)
    registry = CollectorRegistry()
    registry.register(RelayCollector(redis_client, after))
    assert registry.get_sample_value("attentive_relay_queued_unserved") == 2
    assert registry.get_sample_value("attentive_relay_account_unserved", {"account": "brand-x"}) == 2
    assert registry.get_sample_value("attentive_relay_account_unserved", {"account": "brand-b"}) == 0
    oldest = registry.get_sample_value("attentive_relay_account_oldest_queued_seconds", {"account": "brand-x"})
    assert oldest is not None and oldest >= 0
    assert registry.get_sample_value("attentive_relay_dead_lettered_total", {"reason": "unknown_account"}) == 0


def test_with_a_real_worker_their_age_grows_and_stats_count_them_overdue(redis_server, redis_client, start_worker):
    """Issue 15: the reconciler found their messages still waiting and put them back at the end
    of the queued index on every pass, so `queued_overdue` stayed 0 and `oldest_queued_s` about
    3 s while the jobs waited until their records expired."""
    before, after = both(redis_server.url, attentive_orphan_s=1)
    ids = all_queued(Producer(before, redis_client).enqueue_many([{**EVENT, "account": "brand-x"}] * 5))
    queued_at = time.monotonic()
    assert stats(redis_client, after)["unserved"]["brand-x"]["queued"] == 5, "named at once"
    start_worker(settings_=after)
    wait_for(lambda: stats(redis_client, after)["queued_overdue"] == 5, 30, "the jobs to count as overdue")
    overdue_after = time.monotonic() - queued_at
    time.sleep(2 * after.attentive_orphan_s)  # two more orphan periods: the reconciler has looked at them again
    s = stats(redis_client, after)
    age = time.monotonic() - queued_at
    assert s["queued_overdue"] == 5 and s["queued_unserved"] == 5
    assert s["oldest_queued_s"] >= age - 1.5, f"oldest_queued_s {s['oldest_queued_s']} after {age:.1f} s"
    assert all(job_state(redis_client, i) == "queued" for i in ids)
    print(f"\nunserved at once; counted overdue after {overdue_after:.1f} s (ATTENTIVE_ORPHAN_S=1)")
