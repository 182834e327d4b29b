"""Real ``celery -A worker worker`` processes, a real Redis, the sandbox over real HTTP.

Shows every outcome end to end, and the crash cases: a pool process SIGKILLed mid-delivery,
a whole worker SIGKILLed mid-delivery, and a worker killed while a retry waits.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from functools import partial

import httpx
import pytest
import redis

from producers.producer import Producer
from producers.settings import Settings
from producers.store import keys
from producers.store.enqueue import push_jobs
from worker.counters import stats
from worker.local.processes import RedisServer

from conftest import (
    TEST_ERASURE_KEY,
    TOKEN,
    add_fault,
    finished,
    make_settings,
    queued_count,
    sandbox_requests,
    wait_for,
)

PHONE = "+14155552671"
# The shortest lease the settings allow (ATTENTIVE_TIMEOUT_S + 10): a job whose worker died comes
# back when its lease ends, so the crash tests wait about this long for each recovery. The 2 s
# request deadline only bounds the requests the tests cut short with a kill (sent, then killed
# within a poll or two) and the sandbox's quick answers to the resends.
CRASH_TIMEOUT_S = 2
CRASH_LEASE_S = CRASH_TIMEOUT_S + 10


def crash_settings(redis_server, sandbox, **overrides) -> Settings:
    """`make_settings` with the shortest lease, for the tests that kill a worker mid-delivery."""
    return make_settings(
        redis_server.url, sandbox.url, attentive_lease_s=CRASH_LEASE_S, attentive_timeout_s=CRASH_TIMEOUT_S, **overrides
    )


def event(type_: str, **extra) -> dict:
    return {"kind": "custom_event", "type": type_, "user": {"phone": PHONE}, **extra}


def requests_for(sandbox, type_: str) -> list[dict]:
    return [r for r in sandbox_requests(sandbox) if (r["body"] or {}).get("type") == type_]


def test_every_outcome_through_a_real_worker(redis_server, redis_client, sandbox, start_worker):
    settings = make_settings(
        redis_server.url,
        sandbox.url,
        attentive_timeout_s=1,
        attentive_max_attempts=2,
        attentive_accounts=json.dumps({"brand-a": {"token": TOKEN}}),
    )
    producer = Producer(settings, redis_client)
    add_fault(sandbox, status=200, type="Unreachable Event", times=99, delay_ms=1500)
    add_fault(sandbox, status=400, type="Rejected Event", times=1)
    add_fault(sandbox, status=401, type="Unauthorized Event", times=1)
    add_fault(sandbox, status=503, type="Flaky Event", times=1)
    add_fault(sandbox, status=429, type="Throttled Event", times=99)
    add_fault(sandbox, status=500, type="Broken Event", times=99)
    # The refused token is brand-a's: brand-a is paused and its job held; the rest go on.
    ids = {
        name: producer.enqueue(event(name, **({"account": "brand-a"} if name == "Unauthorized Event" else {})))
        for name in (
            "Plain Event",
            "Rejected Event",
            "Unauthorized Event",
            "Flaky Event",
            "Throttled Event",
            "Broken Event",
            "Unreachable Event",
        )
    }
    ids["attributes"] = producer.enqueue(
        {"kind": "custom_attributes", "user": {"phone": PHONE}, "properties": {"tier": "gold"}}
    )
    ids["identity"] = producer.enqueue({"kind": "identity", "clientUserId": "c-1", "phone": PHONE})
    old = (datetime.now(UTC) - timedelta(hours=13)).isoformat()
    push_jobs(
        redis_client,
        settings,
        [
            ("stale-job", "custom_event", json.dumps(event("Stale Event", occurredAt=old))),
            ("invalid-job", "custom_event", json.dumps(event("Bad|Type"))),
            ("poison-job", "custom_event", json.dumps(event("Poison Event"))),
        ],
        TEST_ERASURE_KEY,
    )
    redis_client.hset(keys.job("poison-job"), "history", "{not json")
    total = len(ids) + 3
    worker = start_worker(settings_=settings)
    wait_for(lambda: finished(redis_client, settings) >= total - 1, 90, "every job to finish or be held")
    time.sleep(1)
    s = stats(redis_client, settings)
    assert s["delivered"] == 4  # plain, flaky after a 503, attributes, identity
    assert s["paused"]["brand-a|attentive_rest"]["held"] == 1 and s["scheduled"] == 1
    assert {k: v for k, v in s["dead_letter"].items() if v} == {
        "rejected": 1,
        "rate_limited": 1,
        "server_error": 1,
        "network_error": 1,
        "stale": 1,
        "invalid": 1,
        "crashed": 1,
    }
    assert s["enqueued"] == s["delivered"] + sum(s["dead_letter"].values()) + 1, "one outcome per job, one held"
    assert s["queued"] == s["in_flight"] == 0
    assert [r["status"] for r in requests_for(sandbox, "Flaky Event")] == [503, 200]
    assert len(requests_for(sandbox, "Unreachable Event")) == 2
    assert len(requests_for(sandbox, "Throttled Event")) == settings.attentive_max_attempts
    assert requests_for(sandbox, "Stale Event") == [] and requests_for(sandbox, "Poison Event") == []
    paths = {r["path"] for r in sandbox_requests(sandbox)}
    assert {"/v1/attributes/custom", "/v1/identity-resolution/user-identifiers"} <= paths

    # Logs: JSON lines off a terminal, delivery fields as keys, and no personal data or token.
    log_text = worker.log_path.read_text()
    records = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    attempts = [r for r in records if r.get("endpoint") == "/v1/events/custom" and r.get("status") == 503]
    assert attempts and {"job_id", "kind", "attempt", "status", "outcome", "reason"} <= attempts[0].keys()
    for secret in (PHONE, "4155552671", "555-2671", TOKEN):
        assert secret not in log_text


def _wait_for_arrival(sandbox, type_: str) -> dict:
    return wait_for(lambda: requests_for(sandbox, type_), 30, f"{type_} to reach the sandbox")[0]


def test_pool_process_killed_mid_delivery_loses_nothing(redis_server, redis_client, sandbox, start_worker):
    settings = crash_settings(redis_server, sandbox)
    producer = Producer(settings, redis_client)
    add_fault(sandbox, status=200, type="Slow Event", times=1, delay_ms=5000)
    worker = start_worker(concurrency=1, settings_=settings)
    job_id = producer.enqueue(event("Slow Event"))
    first = _wait_for_arrival(sandbox, "Slow Event")
    for pid in worker.child_pids():
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: stats(redis_client, settings)["delivered"] == 1, 60, "delivery after the kill")
    sent = requests_for(sandbox, "Slow Event")
    assert len(sent) == 2 and sent[1]["status"] == 200
    assert sent[0]["body"]["externalEventId"] == sent[1]["body"]["externalEventId"] == first["body"]["externalEventId"]
    assert not redis_client.exists(keys.job(job_id))


def test_a_job_that_kills_its_worker_every_time_ends_as_worker_lost(redis_server, redis_client, sandbox, start_worker):
    settings = crash_settings(redis_server, sandbox, attentive_max_attempts=2)
    add_fault(sandbox, status=200, type="Deadly Event", times=99, delay_ms=10_000)
    worker = start_worker(concurrency=1, settings_=settings)
    job_id = Producer(settings, redis_client).enqueue(event("Deadly Event"))

    def attempts_seen(n: int) -> bool:
        return len(requests_for(sandbox, "Deadly Event")) == n

    for attempt in (1, 2):
        wait_for(partial(attempts_seen, attempt), 40, f"attempt {attempt}")
        for pid in worker.child_pids():
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: redis_client.exists(keys.dead(job_id)), 40, "the dead letter")
    entry = json.loads(redis_client.get(keys.dead(job_id)))
    assert entry["reason"] == "worker_lost"
    assert len(requests_for(sandbox, "Deadly Event")) == 2, "no third attempt"
    s = stats(redis_client, settings)
    assert s["delivered"] == 0 and s["dead_letter"]["worker_lost"] == 1 and s["in_flight"] == 0


def test_whole_worker_killed_mid_delivery_is_recovered_by_another_worker(
    redis_server, redis_client, sandbox, start_worker
):
    settings = crash_settings(redis_server, sandbox)
    producer = Producer(settings, redis_client)
    add_fault(sandbox, status=200, type="Slow Event", times=1, delay_ms=8000)
    doomed = start_worker("doomed", settings_=settings)
    job_id = producer.enqueue(event("Slow Event"))
    _wait_for_arrival(sandbox, "Slow Event")
    doomed.kill_all()
    killed_at = time.monotonic()
    start_worker("rescuer", settings_=settings)
    wait_for(lambda: stats(redis_client, settings)["delivered"] == 1, 120, "the rescuer to deliver")
    assert time.monotonic() - killed_at < 120
    # kombu keeps no copy of the dead worker's message (ack_emulation is off): nothing restores
    # it later, and the lease alone brought the job back.
    assert not redis_client.exists("unacked")
    time.sleep(3)
    # Two requests reached Attentive: the dead worker's (answered to nobody) and the rescuer's,
    # carrying the same externalEventId; no third one from the restored message.
    sent = requests_for(sandbox, "Slow Event")
    assert len(sent) == 2
    assert len({r["body"]["externalEventId"] for r in sent}) == 1
    s = stats(redis_client, settings)
    assert s["delivered"] == 1 and sum(s["dead_letter"].values()) == 0 and s["queued"] == 0
    assert not redis_client.exists(keys.job(job_id))


def test_a_delayed_retry_survives_a_worker_crash_and_runs_once(redis_server, redis_client, sandbox, start_worker):
    settings = crash_settings(redis_server, sandbox, attentive_backoff_max_s=60)
    producer = Producer(settings, redis_client)
    # Longer than the lease: only the schedule can bring it back (ack emulation is off, so
    # kombu has no visibility timeout to wait out).
    later = CRASH_LEASE_S + 2
    add_fault(sandbox, status=429, type="Later Event", times=1, retry_after=later)
    doomed = start_worker("doomed", settings_=settings)
    job_id = producer.enqueue(event("Later Event"))
    wait_for(lambda: redis_client.zscore(keys.SCHEDULE, job_id), 30, "the retry to be scheduled")
    # The retry waits in the schedule, not in the broker: nothing for kombu to restore or redeliver.
    assert queued_count(redis_client, "attentive") == 0
    doomed.kill_all()
    start_worker("rescuer", settings_=settings)
    wait_for(lambda: stats(redis_client, settings)["delivered"] == 1, later + 40, "the retry")
    time.sleep(3)
    assert [r["status"] for r in requests_for(sandbox, "Later Event")] == [429, 200]
    s = stats(redis_client, settings)
    assert s["retries"] == 1 and s["scheduled"] == 0 and s["queued"] == 0


def test_flower_sees_ids_not_personal_data(settings, producer, redis_client, sandbox, start_worker):
    """The broker message (what Flower and events show as args) holds the job id and kind only."""
    job_id = producer.enqueue(event("Private Event", properties={"secret": "value-123"}))
    raw = redis_client.lrange("attentive", 0, -1)[0].decode()
    assert job_id in raw and PHONE not in raw and "value-123" not in raw
    start_worker()
    wait_for(lambda: stats(redis_client, settings)["delivered"] == 1, 30, "delivery")
    assert sandbox_requests(sandbox)[0]["body"]["user"]["phone"] == PHONE


def test_a_redis_restart_loses_nothing(tmp_path, sandbox, start_worker):
    """Redis with AOF persistence restarted mid-run: every job still ends exactly once."""
    server = RedisServer(appendonly=True, workdir=tmp_path).start()
    try:
        # A message taken from Redis as it stopped can be lost with it (kombu cannot restore it
        # to a Redis that is down): the reconciler queues its job again once it has said
        # `queued` for ATTENTIVE_ORPHAN_S. 3 s instead of a minute keeps the test short. An attempt
        # under way when Redis went comes back when its lease ends: the crash tests' short lease.
        settings = crash_settings(server, sandbox, attentive_orphan_s=3)
        client = redis.Redis.from_url(server.url)
        producer = Producer(settings, client)
        httpx.post(f"{sandbox.url}/__sandbox/config", json={"latency_ms": 40}).raise_for_status()
        worker = start_worker(settings_=settings)
        ids = [producer.enqueue(event(f"Restart Event {i}")) for i in range(40)]
        wait_for(lambda: stats(client, settings)["delivered"] >= 5, 30, "the first deliveries")
        server.stop()
        time.sleep(2)
        server.start()

        def progress() -> bool:
            # No supervisor: the same worker must ride through the loss (kombu's teardown crash is
            # guarded, see worker.compat.kombu_closed_channel_guard and test_broker_connection_loss.py).
            assert worker.proc.poll() is None, f"the worker exited: see {worker.log_path}"
            return finished(client, settings) >= len(ids)

        wait_for(progress, 120, "every job to finish after the restart", 0.5)
        assert "Unrecoverable error" not in worker.log_path.read_text(errors="replace")
        s = stats(client, settings)
        assert s["delivered"] == len(ids) and sum(s["dead_letter"].values()) == 0
        accepted = {r["body"]["type"] for r in sandbox_requests(sandbox) if r["status"] == 200}
        assert accepted == {f"Restart Event {i}" for i in range(40)}
        assert not any(client.exists(keys.job(i)) for i in ids)
    finally:
        server.stop()


@pytest.mark.parametrize("remap", [{}, {"REMAP_SIGTERM": "SIGQUIT"}], ids=["warm", "soft"])
def test_sigterm_drains_the_attempt_in_flight_and_leaves_the_queue_intact(
    redis_server, redis_client, sandbox, start_worker, remap
):
    """As a platform stops a worker: SIGTERM (a warm shutdown, or remapped to a soft one), then a new worker."""
    settings = make_settings(redis_server.url, sandbox.url)
    producer = Producer(settings, redis_client)
    add_fault(sandbox, status=200, type="Draining", times=1, delay_ms=2000)
    worker = start_worker("stopping", concurrency=1, settings_=settings, **remap)
    producer.enqueue(event("Draining"))
    _wait_for_arrival(sandbox, "Draining")
    waiting = [producer.enqueue(event(f"Waiting {i}")) for i in range(3)]
    worker.proc.send_signal(signal.SIGTERM)
    # Up to 30 s more than the drain: a prefork child whose last task ended after the shutdown
    # began waits that long for the parent to read its result (billiard's
    # _ensure_messages_consumed) before it exits.
    worker.proc.wait(45)
    s = stats(redis_client, settings)
    assert [r["status"] for r in requests_for(sandbox, "Draining")] == [200], "the request in flight finished"
    # A task only hands its job to the sender threads, so the worker went on taking the waiting
    # jobs while the slow request ran: each is delivered, or given back to the queue or the
    # schedule at shutdown; none is left running under a lease.
    assert s["delivered"] >= 1 and s["in_flight"] == 0
    assert s["delivered"] + s["queued"] + s["scheduled"] == 1 + len(waiting), s
    assert redis_client.hlen("unacked") == 0
    start_worker("next", settings_=settings)
    wait_for(lambda: stats(redis_client, settings)["delivered"] == 4, 30, "the rest")
    assert len(requests_for(sandbox, "Draining")) == 1
