"""Retention and erasure: personal data expires, and one person can be erased from Redis.

Every key that holds a job's content expires (job records after the job retention, dead
letters after ``ATTENTIVE_DLQ_RETENTION_DAYS``), and ``attentive-relay erase`` deletes every job
and dead letter that mentions a phone number or an email, found through a keyed-hash index.
The erasure test reads every value of every key afterwards and looks for the address.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import redis

from producers.errors import ConfigurationError
from producers.producer import Producer
from producers.settings import Settings, load_settings
from producers.store import keys, replies
from producers.store.erasure import mentions, person_key, secret
from producers.store.message import ticket_for
from worker.counters import stats

from conftest import add_fault, claimed, delivery_for, env_for, make_settings

EMAIL = "Erase.Me@Example.com"
PHONE = "+14155552671"
OTHER = "keep.me@example.com"


def everything_in(client: redis.Redis) -> str:
    """Every key name and every value in the database, as one string."""
    parts = []
    for key in client.scan_iter(count=1000):
        parts.append(key.decode(errors="replace"))
        kind = replies.text(client.type(key))
        if kind == "none":
            continue  # deleted since the scan (a lock, a job that just ended)
        if kind == "string":
            parts.append(repr(client.get(key)))
        elif kind == "hash":
            parts.extend(f"{k!r}{v!r}" for k, v in client.hgetall(key).items())
        elif kind == "list":
            parts.extend(repr(v) for v in client.lrange(key, 0, -1))
        elif kind == "set":
            parts.extend(repr(v) for v in client.smembers(key))
        elif kind == "zset":
            parts.extend(repr(v) for v in client.zrange(key, 0, -1))
        else:
            raise AssertionError(f"unexpected key type {kind}")
    return "\n".join(parts)


def erase_cli(settings: Settings, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "erase", *args],
        env={**os.environ, **env_for(settings)},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def event(email: str, **extra) -> dict:
    return {"kind": "custom_event", "type": "Order Placed", "user": {"email": email}, **extra}


def test_a_job_mentions_its_phone_fields_and_every_email_anywhere():
    job = '{"user":{"phone":"+14155552671","email":"A@Example.com"},"properties":{"note":"cc b.c@x.org"}}'
    assert mentions(job) == {"+14155552671", "a@example.com", "b.c@x.org"}


def test_job_records_and_person_indexes_expire(settings, producer: Producer, redis_client):
    job_id = producer.enqueue(event(EMAIL))
    retention = settings.job_retention_ms
    assert retention == 24 * 3_600_000, "freshness (12 h) + 12 h by default"
    assert retention - 5000 < redis_client.pttl(keys.job(job_id)) <= retention
    index = person_key(secret(redis_client, settings), EMAIL.lower())
    assert redis_client.sismember(index, job_id)
    assert settings.dlq_retention_ms - 5000 < redis_client.pttl(index) <= settings.dlq_retention_ms


def test_an_expired_job_is_counted_not_lost_silently(settings, producer: Producer, redis_client):
    queued, scheduled = producer.enqueue(event(EMAIL)), producer.enqueue(event(EMAIL))
    store = delivery_for(settings, redis_client).store
    claim = claimed(store, scheduled, 0, 1000)
    assert store.schedule(claim, 1000, 10, [])
    for job_id in (queued, scheduled):
        redis_client.pexpire(keys.job(job_id), 1)
    time.sleep(0.05)
    far = int(time.time() * 1000) + 10**9
    store.promote(far)
    store.reconcile(far)
    s = stats(redis_client, settings)
    assert s["expired"] == 2
    assert s["enqueued"] == s["delivered"] + sum(s["dead_letter"].values()) + s["erased"] + s["expired"]


def test_the_old_dead_letter_retention_name_is_still_read(monkeypatch):
    monkeypatch.setenv("ATTENTIVE_DEAD_LETTER_RETENTION_DAYS", "7")
    assert Settings().attentive_dlq_retention_days == 7
    monkeypatch.setenv("ATTENTIVE_DLQ_RETENTION_DAYS", "3")
    monkeypatch.delenv("ATTENTIVE_DEAD_LETTER_RETENTION_DAYS")
    assert Settings().attentive_dlq_retention_days == 3


def test_a_job_retention_shorter_than_the_freshness_window_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ATTENTIVE_JOB_RETENTION_HOURS", "6")
    with pytest.raises(ConfigurationError, match="ATTENTIVE_JOB_RETENTION_HOURS"):
        load_settings()


def test_erase_leaves_no_redis_value_holding_the_address(redis_server, redis_client, sandbox):
    settings = make_settings(redis_server.url, sandbox.url, attentive_max_attempts=1)
    producer = Producer(settings, redis_client)
    store = delivery_for(settings, redis_client).store
    queued = producer.enqueue(event(EMAIL))
    scheduled = producer.enqueue({"kind": "custom_attributes", "user": {"email": EMAIL}, "properties": {"a": "b"}})
    in_flight = producer.enqueue(event(OTHER, properties={"referrer": EMAIL.upper()}))
    add_fault(sandbox, status=400, type="Doomed", times=1)
    doomed = producer.enqueue(event(EMAIL, type="Doomed"))
    kept = producer.enqueue(event(OTHER))

    claim = claimed(store, scheduled, 0, 1000)
    assert store.schedule(claim, 1000, 60_000, [])
    running = claimed(store, in_flight, 0, int(time.time() * 1000))
    assert delivery_for(settings, redis_client).run(doomed, ticket_for(doomed, 0)) == "dead:rejected"
    assert EMAIL.lower() in everything_in(redis_client).lower()

    done = erase_cli(settings, "--email", "-", "--json", stdin=EMAIL.upper() + "\n")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["jobs"] == 3 and json.loads(done.stdout)["dead_letters"] == 1
    assert EMAIL.lower() not in everything_in(redis_client).lower()

    assert not store.delivered(running, int(time.time() * 1000)), "the delivery in flight records nothing"
    assert not redis_client.exists(keys.job(in_flight)), "and does not bring the record back"
    assert redis_client.hget(keys.job(kept), "state") == b"queued", "another person's job is untouched"
    s = stats(redis_client, settings)
    assert s["erased"] == 3 and s["queued_overdue"] == 0 and s["scheduled"] == 0 and s["in_flight"] == 0
    assert queued not in {m.decode() for m in redis_client.zrange(keys.QUEUED, 0, -1)}
    again = erase_cli(settings, "--email", EMAIL)
    assert again.returncode == 0 and "erased 0 jobs and 0 dead letters" in again.stdout


def test_erase_by_phone_in_any_format(settings, producer: Producer, redis_client):
    job_id = producer.enqueue({"kind": "custom_event", "type": "T", "user": {"phone": "(415) 555-2671"}})
    done = erase_cli(settings, "--phone", "415 555 2671", "--json")
    assert done.returncode == 0, done.stderr
    assert (json.loads(done.stdout)["jobs"], json.loads(done.stdout)["dead_letters"]) == (1, 0)
    assert not redis_client.exists(keys.job(job_id))
    assert PHONE not in everything_in(redis_client)


def test_erase_names_the_rule_never_the_value(settings):
    done = erase_cli(settings, "--email", "not-an-address-secret")
    assert done.returncode == 1 and "email: not a valid email address" in done.stderr
    assert "secret" not in done.stderr
    both = erase_cli(settings, "--email", EMAIL, "--phone", PHONE)
    assert both.returncode == 2 and "exactly one" in both.stderr


def test_a_configured_erasure_key_is_not_kept_in_redis(redis_server, redis_client, sandbox):
    settings = make_settings(redis_server.url, sandbox.url, attentive_erasure_key="k" * 32)
    Producer(settings, redis_client).enqueue(event(EMAIL))
    assert not redis_client.exists(keys.ERASURE_KEY)
    assert redis_client.exists(person_key(b"k" * 32, EMAIL.lower()))
