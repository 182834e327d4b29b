"""Identity waiters at scale (`producers.store.ordering`, `worker.jobstore`): releasing 50,000 of
them in short scripts, a cap on how many one identity job gathers, and an orphaned waiter
(its identity job vanished) released within the orphan period behind 50,000 live ones.

The waiters are queued through the real enqueue path (`producers.store.enqueue.push_jobs`, without
validation), 500 at a time.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from producers.producer import Producer
from producers.settings import Settings
from producers.store import keys
from producers.store.enqueue import push_jobs
from worker.counters import stats
from worker.jobstore import JobStore
from worker.schedule import Promoter

from conftest import TEST_ERASURE_KEY, claimed, job_state, make_settings, wait_for

SCRIPT_COMMANDS = (b"EVAL", b"EVALSHA", b"EVAL_RO", b"EVALSHA_RO", b"FCALL")


def now_ms() -> int:
    return int(time.time() * 1000)


def store_for(client: redis.Redis, settings: Settings) -> JobStore:
    return JobStore(client, "attentive", 60_000, 86_400_000, int(settings.attentive_orphan_s * 1000))


def identity_job(user: str) -> str:
    return json.dumps({"kind": "identity", "clientUserId": user, "email": "jane.doe@example.com"})


def event_for(user: str) -> str:
    return json.dumps({"kind": "custom_event", "type": "T", "user": {"externalIdentifiers": {"clientUserId": user}}})


def add_identities(client: redis.Redis, settings: Settings, users: list[str]) -> None:
    """One pending identity job per user, its id ``identity-<user>``."""
    for start in range(0, len(users), 500):
        jobs = [(f"identity-{u}", "identity", identity_job(u)) for u in users[start : start + 500]]
        push_jobs(client, settings, jobs, TEST_ERASURE_KEY)


def add_waiters(client: redis.Redis, settings: Settings, users: list[str], per_user: int, tag: str) -> list[str]:
    """``per_user`` events for each user, queued in rounds (each user's first, then second...)."""
    jobs = [(f"{tag}-{u}-{i}", "custom_event", event_for(u)) for i in range(per_user) for u in users]
    for start in range(0, len(jobs), 500):
        push_jobs(client, settings, jobs[start : start + 500], TEST_ERASURE_KEY)
    return [job_id for job_id, _, _ in jobs]


@contextmanager
def slowlog(client: redis.Redis, slower_than_us: int) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Scripts Redis ran for longer than ``slower_than_us`` meanwhile (its SLOWLOG)."""
    client.config_set("slowlog-log-slower-than", slower_than_us)
    client.config_set("slowlog-max-len", 10_000)
    client.slowlog_reset()
    try:
        yield lambda: [e for e in client.slowlog_get(10_000) if e["command"].split()[0].upper() in SCRIPT_COMMANDS]
    finally:
        client.config_set("slowlog-log-slower-than", 10_000)
        client.config_set("slowlog-max-len", 128)


def test_50k_waiters_are_released_by_scripts_of_under_50_ms(redis_server, redis_client):
    """Issue 15: with 50,000 waiters, recording the identity job's end was one script of about
    3.8 s, and Redis served nobody meanwhile."""
    settings = make_settings(redis_server.url)
    add_identities(redis_client, settings, ["u-1"])
    waiters = add_waiters(redis_client, settings, ["u-1"], 50_000, "w")
    assert redis_client.zcard(keys.WAITING) == 50_000
    store = store_for(redis_client, settings)
    claim = claimed(store, "identity-u-1", 0, now_ms())
    promoter = Promoter(store)
    # Scripts of 1 ms or more (with no threshold, the commands inside scripts fill the log).
    with slowlog(redis_client, 1000) as scripts_run:
        started = time.monotonic()
        assert store.delivered(claim, now_ms())
        for _ in range(10_000):
            if not redis_client.zcard(keys.WAITING) or time.monotonic() - started > 120:
                break
            promoter.run_once()
        took = time.monotonic() - started
        durations_ms = sorted(e["duration"] / 1000 for e in scripts_run())
    # SLOWLOG times a script by the wall clock: on 2 loaded cores the Redis process is sometimes
    # descheduled mid-script (one 100-waiter script "took" 93 ms once, against 3-7 ms in every
    # other run). So: the 99th percentile far under 50 ms, and at most one lone script over it.
    # The old code (one script for every waiter) fails both: its single script ran 3.8 s.
    p99 = durations_ms[int(len(durations_ms) * 0.99)] if durations_ms else 0.0
    over = [d for d in durations_ms if d >= 50]
    assert p99 < 25 and len(over) <= 1, f"scripts of {p99:.1f} ms (p99); {over} ms at or over 50 ms"
    assert redis_client.zcard(keys.WAITING) == 0, f"every waiter released (after {took:.1f} s)"
    assert redis_client.zcard(keys.QUEUED) == 50_000
    assert all(job_state(redis_client, w) == "queued" for w in (waiters[0], waiters[25_000], waiters[-1]))
    first, last = (int(redis_client.zscore(keys.QUEUED, w)) for w in (waiters[0], waiters[-1]))
    assert first <= last, "released oldest first"
    print(
        f"\n50,000 waiters released in {took:.2f} s; {len(durations_ms)} scripts, "
        f"p99 {p99:.1f} ms, max {max(durations_ms, default=0):.1f} ms"
    )


def test_past_the_cap_an_event_is_queued_at_once_and_counted(redis_server, redis_client):
    settings = make_settings(redis_server.url, attentive_max_waiters=3)
    producer = Producer(settings, redis_client)
    producer.enqueue({"kind": "identity", "clientUserId": "u-1", "email": "jane.doe@example.com"})
    event = {"kind": "custom_event", "type": "T", "user": {"externalIdentifiers": {"clientUserId": "u-1"}}}
    events = [producer.enqueue(event) for _ in range(5)]
    assert [job_state(redis_client, e) for e in events] == ["waiting"] * 3 + ["queued"] * 2
    s = stats(redis_client, settings)
    assert s["waiting"] == 3 and s["waiters_over_cap"] == 2


def test_the_cap_is_a_setting_checked_at_start_up():
    import pytest

    from producers.errors import ConfigurationError
    from producers.settings import load_settings

    with pytest.MonkeyPatch.context() as env:
        env.setenv("ATTENTIVE_MAX_WAITERS", "0")
        with pytest.raises(ConfigurationError, match="ATTENTIVE_MAX_WAITERS"):
            load_settings()
    assert Settings().attentive_max_waiters == 100_000


def test_enqueue_does_not_slow_down_as_the_waiter_list_grows(redis_server, redis_client):
    settings = make_settings(redis_server.url, attentive_max_waiters=200_000)
    add_identities(redis_client, settings, ["u-1"])

    def median_enqueue_us(tag: str) -> float:
        times = []
        for i in range(300):
            job = [(f"{tag}-{i}", "custom_event", event_for("u-1"))]
            started = time.perf_counter()
            push_jobs(redis_client, settings, job, TEST_ERASURE_KEY)
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1e6

    short = median_enqueue_us("short")
    filler = [f"filler-{i}" for i in range(1000)]
    for _ in range(100):
        redis_client.rpush(keys.waiters("identity-u-1"), *filler)
    assert redis_client.llen(keys.waiters("identity-u-1")) > 100_000
    long = median_enqueue_us("long")
    assert job_state(redis_client, "long-0") == "waiting"
    assert long < 2 * short + 200, f"{short:.0f} us with a short list, {long:.0f} us with 100,000 waiters"


def test_an_orphaned_waiter_behind_50k_live_waiters_is_released_within_the_orphan_period(redis_server, redis_client):
    """Issue 15: behind 2,000 live waiters, an orphan took about 100 s with ATTENTIVE_ORPHAN_S=2
    (each pass looked at the 20 oldest waiters and put them back). Here: 50,000 live waiters
    of 5,000 pending identity jobs, a real promoter thread, and an identity job erased."""
    settings = make_settings(redis_server.url, attentive_orphan_s=2)
    users = [f"u-{k}" for k in range(5_000)]
    add_identities(redis_client, settings, [*users, "gone"])
    add_waiters(redis_client, settings, users, 10, "live")
    [orphan] = add_waiters(redis_client, settings, ["gone"], 1, "orphan")
    assert redis_client.zcard(keys.WAITING) == 50_001
    promoter = Promoter(store_for(redis_client, settings), interval_s=0.1)
    promoter.start()
    try:
        time.sleep(1)  # a few passes over the live waiters first (one every 0.1 s)
        redis_client.delete(keys.job("identity-gone"))  # erased, or expired before it ended
        vanished = time.monotonic()
        wait_for(lambda: job_state(redis_client, orphan) == "queued", 60, "the orphan to be released")
        took = time.monotonic() - vanished
    finally:
        promoter.stop()
    assert took <= settings.attentive_orphan_s + 10, f"released {took:.1f} s after its identity job vanished"
    assert redis_client.zcard(keys.WAITING) == 50_000, "the live waiters still wait"
    print(f"\norphan released {took:.2f} s after its identity job vanished (ATTENTIVE_ORPHAN_S=2)")
