"""The lease fence (`worker.lease`): a send leaves only while its attempt holds the job."""

from __future__ import annotations

import time
from typing import Any

import redis

from producers.store import keys
from producers.store.message import ticket_for
from worker.lease import Leases

from conftest import PURCHASE, KindLimiter, claimed, delivery_for, sandbox_requests


def test_the_fence_renews_only_the_attempt_that_holds_the_job(settings, producer, redis_client):
    store = delivery_for(settings, redis_client).store
    leases = Leases(redis_client, store.lease_ms)
    job_id = producer.enqueue(PURCHASE)
    claim = claimed(store, job_id, 0, 1_000)
    leases.hold(job_id, claim.ticket, 1_000 + store.lease_ms)
    leases.check_epoch()  # no erasure since: the local lease can be trusted
    assert leases.fence(job_id, claim.ticket, 2_000, need_ms=5_000), "the claim's lease outlasts the send"
    assert redis_client.zscore(keys.LEASES, job_id) == 1_000 + store.lease_ms, "no round trip needed"
    assert leases.fence(job_id, claim.ticket, 50_000, need_ms=5_000)
    assert redis_client.zscore(keys.LEASES, job_id) == 50_000 + store.lease_ms, "renewed near its end"
    assert store.promote(50_000 + store.lease_ms + 1) == (0, 1), "the lease ended: taken over"
    assert not leases.fence(job_id, claim.ticket, 50_000 + store.lease_ms, need_ms=5_000), "no longer held"
    assert redis_client.zscore(keys.LEASES, job_id) is None


def test_a_live_process_keeps_the_leases_of_the_jobs_it_holds(settings, producer, redis_client):
    store = delivery_for(settings, redis_client).store
    leases = Leases(redis_client, store.lease_ms)
    kept, lost = producer.enqueue(PURCHASE), producer.enqueue({**PURCHASE, "orderId": "o-2"})
    for job_id in (kept, lost):
        claim = claimed(store, job_id, 0, 1_000)
        leases.hold(job_id, claim.ticket, 1_000 + store.lease_ms)
    redis_client.hset(keys.job(lost), "ticket", "someone-else")
    assert leases.renew_held(90_000) == 1
    assert redis_client.zscore(keys.LEASES, kept) == 90_000 + store.lease_ms
    assert leases.held() == 1, "a job taken over is let go"
    leases.stop()


def test_an_attempt_taken_over_while_it_waited_for_its_slot_does_not_send(settings, producer, redis_client, sandbox):
    """The attempt waits for its rate-limit slot; meanwhile its lease ends and the promoter
    queues the job again. When the slot comes, the fence stops the send."""
    job_id = producer.enqueue(PURCHASE)
    limiter = KindLimiter(redis_client, settings)
    limiter.back_off("purchase", 1.5)  # the next slot is 1.5 s away: the thread sleeps
    store_view = delivery_for(settings, redis_client).store

    stalled_s = [0.0]

    def clock() -> float:
        return time.time() + stalled_s[0]

    def sleep_while_taken_over(seconds: float) -> None:
        # The process froze for a whole lease (no renewals): the promoter took the job over.
        stalled_s[0] += store_view.lease_ms / 1000 + 1
        store_view.promote(int(clock() * 1000))
        time.sleep(seconds)

    delivery = delivery_for(settings, redis_client)
    delivery.limiter, delivery.sleep, delivery.clock = limiter.limiter, sleep_while_taken_over, clock
    assert delivery.run(job_id, ticket_for(job_id, 0)) == "skipped:taken_over"
    assert sandbox_requests(sandbox) == [], "nothing left for the API"
    assert redis_client.hget(keys.job(job_id), "ticket") == ticket_for(job_id, 1).encode(), "the new attempt has it"


def test_a_process_that_holds_no_job_makes_no_round_trips(settings, producer, redis_client):
    """The epoch poll runs only while a job is held: idle workers (and stopped tests' threads
    whose Redis is gone) neither load Redis nor fill the log with failed renewals."""

    class Counted(redis.Redis):
        calls = 0

        def execute_command(self, *args: Any, **options: Any) -> Any:
            Counted.calls += 1
            return super().execute_command(*args, **options)

    store = delivery_for(settings, redis_client).store
    leases = Leases(Counted.from_url(settings.redis_url.get_secret_value()), store.lease_ms)
    job_id = producer.enqueue(PURCHASE)
    claim = claimed(store, job_id, 0, 1_000)
    leases.hold(job_id, claim.ticket, 1_000 + store.lease_ms)
    time.sleep(1.2)
    assert Counted.calls >= 2, "the epoch is read while a job is held"
    leases.let_go(job_id)
    time.sleep(0.6)  # a poll that had started when the job was let go
    idle = Counted.calls
    time.sleep(1.2)
    assert Counted.calls == idle, "no round trips while nothing is held"
    leases.stop()
