"""Moving jobs nobody serves (`attentive-relay requeue`) to another account or to the
dead-letter queue, and `dlq replay`, which never sends a job to a queue nobody consumes. The
jobs were queued while brand-x was configured; the commands run after it was removed."""

from __future__ import annotations

import json
import time

from test_unserved import EVENT, WITHOUT_X, both, relay

from producers.producer import Producer
from producers.store import keys
from producers.store.erasure import customer_id, erase
from producers.store.message import ticket_for
from worker.counters import stats
from worker.deadletter import DeadLetters

from conftest import add_fault, all_queued, claimed, delivery_for, job_state, queued_count, sandbox_requests


def test_requeue_moves_them_to_another_account(redis_server, redis_client, sandbox):
    before, after = both(redis_server.url, sandbox.url)
    producer = Producer(before, redis_client)
    x = {**EVENT, "account": "brand-x"}
    queued = all_queued(producer.enqueue_many([x, x]))
    identity = producer.enqueue(
        {"kind": "identity", "clientUserId": "c-1", "email": "a@example.com", "account": "brand-x"}
    )
    waiter = producer.enqueue(
        {
            "kind": "custom_event",
            "type": "T",
            "account": "brand-x",
            "user": {"externalIdentifiers": {"clientUserId": "c-1"}},
        }
    )
    scheduled = producer.enqueue(x)
    store = delivery_for(before, redis_client).store
    claim = claimed(store, scheduled, 0, int(time.time() * 1000))
    assert store.schedule(claim, int(time.time() * 1000), 0, [])
    assert job_state(redis_client, waiter) == "waiting"

    dry = relay(["requeue", "--from-account", "brand-x", "--to-account", "brand-b", "--dry-run", "--json"], before)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) == {
        "queued": 3,
        "scheduled": 1,
        "waiting": 1,
        "in_flight": 0,
        "moved": 0,
        "dead_lettered": 0,
    }
    done = relay(["requeue", "--from-account", "brand-x", "--to-account", "brand-b", "--json"], before, WITHOUT_X)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "queued": 3,
        "scheduled": 1,
        "waiting": 1,
        "in_flight": 0,
        "moved": 5,
        "dead_lettered": 0,
    }

    for job_id in [*queued, identity, waiter, scheduled]:
        assert redis_client.hget(keys.job(job_id), "account") == b"brand-b"
        assert json.loads(redis_client.hget(keys.job(job_id), "job"))["account"] == "brand-b"
    assert queued_count(redis_client, "attentive.brand-b") == 3
    s = stats(redis_client, after)
    assert s["queued_unserved"] == 0 and s["unserved"] == {}
    delivery = delivery_for(after, redis_client)
    assert delivery.run(queued[0], ticket_for(queued[0], 0)) == "skipped:stale", "the old message is fenced off"
    for job_id in [*queued, identity]:
        assert delivery.run(job_id, ticket_for(job_id, 1)) == "delivered"
    assert job_state(redis_client, waiter) == "queued", "its identity job ended: it went, onto brand-b's queue"
    assert queued_count(redis_client, "attentive.brand-b") == 4  # (run by hand: no broker took the messages)
    assert len([r for r in sandbox_requests(sandbox) if r["status"] in (200, 202)]) == 3


def test_a_job_moved_to_another_account_is_erased_by_that_account_s_customer_id(redis_server, redis_client):
    """A customer id is indexed per account: after ``requeue --to-account brand-b``, erasing
    brand-b's customer c-9 takes the job that came from brand-x, and so does brand-x's."""
    before, after = both(redis_server.url)
    producer = Producer(before, redis_client)
    by_id = {"kind": "custom_event", "type": "T", "user": {"externalIdentifiers": {"clientUserId": "c-9"}}}
    moved = [producer.enqueue({**by_id, "account": "brand-x"}) for _ in range(2)]
    done = relay(["requeue", "--from-account", "brand-x", "--to-account", "brand-b", "--json"], before, WITHOUT_X)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["moved"] == 2

    erased = erase(redis_client, after, ids=[customer_id("brand-b", "clientUserId", "c-9")], fence_wait_s=0)
    assert erased.jobs == 2
    assert all(not redis_client.exists(keys.job(job_id)) for job_id in moved)


def test_requeue_dead_letters_them_as_unknown_account(redis_server, redis_client):
    before, after = both(redis_server.url)
    producer = Producer(before, redis_client)
    ids = all_queued(producer.enqueue_many([{**EVENT, "account": "brand-x"}] * 3))
    kept = producer.enqueue({**EVENT, "account": "brand-b"})
    done = relay(["requeue", "--from-account", "brand-x", "--dead-letter", "--json"], after)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["dead_lettered"] == 3
    listed = json.loads(relay(["dlq", "list", "--json"], after).stdout)
    assert sorted(e["job_id"] for e in listed) == sorted(ids)
    assert {(e["reason"], e["account"]) for e in listed} == {("unknown_account", "brand-x")}
    assert all("jane.doe" not in json.dumps(e) for e in listed)
    assert "brand-x" in listed[0]["detail"]
    s = stats(redis_client, after)
    assert s["dead_letter"]["unknown_account"] == 3 and s["queued"] == 1 and s["queued_unserved"] == 0
    assert s["accounts"]["brand-x"]["dead_letter"]["unknown_account"] == 3
    assert s["enqueued"] == s["delivered"] + sum(s["dead_letter"].values()) + s["erased"] + s["expired"] + s["queued"]
    assert job_state(redis_client, kept) == "queued"


def test_requeue_refuses_what_it_cannot_do(redis_server, redis_client):
    _, after = both(redis_server.url)
    unknown_target = relay(["requeue", "--from-account", "brand-x", "--to-account", "brand-z"], after)
    assert unknown_target.returncode == 1 and "brand-z" in unknown_target.stderr
    assert relay(["requeue", "--from-account", "brand-x"], after).returncode == 2, "a target or --dead-letter"
    both_ways = relay(["requeue", "--from-account", "brand-x", "--to-account", "brand-b", "--dead-letter"], after)
    assert both_ways.returncode == 2
    served = relay(["requeue", "--from-account", "brand-b", "--dead-letter"], after)
    assert served.returncode == 1 and "brand-b" in served.stderr
    cross = relay(["requeue", "--from-account", "brand-b", "--to-account", "default"], after)
    assert cross.returncode == 1 and "brand-b" in cross.stderr


def test_dlq_replay_refuses_an_entry_whose_account_is_gone_unless_given_one(redis_server, redis_client, sandbox):
    before, after = both(redis_server.url, sandbox.url)
    add_fault(sandbox, status=400, times=1)
    job_id = Producer(before, redis_client).enqueue({**EVENT, "account": "brand-x"})
    assert delivery_for(before, redis_client).run(job_id, ticket_for(job_id, 0)) == "dead:rejected"
    redis_client.delete("attentive.brand-x")  # its message, run by hand above

    refused = relay(["dlq", "replay", job_id], after)
    assert refused.returncode == 1
    assert "brand-x" in refused.stderr and "--to-account" in refused.stderr
    assert DeadLetters(redis_client, after).show(job_id) is not None, "the entry is kept"
    assert queued_count(redis_client, "attentive.brand-x") == 0

    as_json = json.loads(relay(["dlq", "replay", "--all", "--json"], after).stdout)
    assert as_json == {"replayed": 0, "stale": 0, "missing": 0, "unserved": 1}

    moved = relay(["dlq", "replay", job_id, "--to-account", "brand-b", "--json"], after)
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["replayed"] == 1
    assert queued_count(redis_client, "attentive.brand-b") == 1
    assert json.loads(redis_client.hget(keys.job(job_id), "job"))["account"] == "brand-b"
    assert delivery_for(after, redis_client).run(job_id, ticket_for(job_id, 1)) == "delivered"


def test_stats_text_names_the_account_and_the_way_out(redis_server, redis_client):
    before, after = both(redis_server.url)
    Producer(before, redis_client).enqueue({**EVENT, "account": "brand-x"})
    shown = relay(["stats"], after)
    assert shown.returncode == 0
    assert "brand-x" in shown.stdout and "requeue --from-account brand-x" in shown.stdout
