"""A brand paused, not burned (`worker.pause`): a 401 or 403 holds an account's deliveries to
a destination instead of dead-lettering its backlog; ``resume`` sends them."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from producers.accounts import Account
from producers.errors import Unauthorized
from producers.store import keys
from producers.store.message import MAX_BATCH, batch_message, ticket_for, tickets_in
from worker.cli import cli
from worker.counters import stats
from worker.pause import Pauses
from worker.policy import DeadLetter, Pause, RetryPolicy, decide

from conftest import TOKEN, add_fault, delivery_for, env_for, sandbox_requests

EVENT = {"kind": "custom_event", "type": "Order Shipped", "user": {"phone": "+14155552671"}}
POLICY = RetryPolicy(max_attempts=4, base_s=1, max_s=10, freshness_s=43_200)
NOW = datetime(2026, 12, 3, tzinfo=UTC)


@pytest.mark.parametrize("status", [401, 403])
def test_an_answer_that_refuses_the_token_pauses(status):
    decision = decide(Unauthorized("HTTP x", status=status), 1, None, NOW, POLICY, 0.5)
    assert isinstance(decision, Pause) and decision.reason == "unauthorized"


def test_a_missing_token_is_still_a_dead_letter_no_request_was_made():
    assert isinstance(decide(Unauthorized("TOKEN is not set"), 1, None, NOW, POLICY, 0.5), DeadLetter)


@pytest.mark.parametrize("status", [401, 403])
def test_a_401_holds_the_job_and_pauses_the_account_then_resume_sends_it(
    settings, producer, redis_client, sandbox, status
):
    add_fault(sandbox, status=status, times=1)
    delivery = delivery_for(settings, redis_client)
    first, second = producer.enqueue(EVENT), producer.enqueue({**EVENT, "type": "Second"})
    assert delivery.run(first, ticket_for(first, 0)) == "held:unauthorized"
    assert delivery.run(second, ticket_for(second, 0)) == "held:paused", "no request for a paused lane"
    assert len(sandbox_requests(sandbox)) == 1
    s = stats(redis_client, settings)
    assert sum(s["dead_letter"].values()) == 0 and s["scheduled"] == 2
    [(lane, paused)] = s["paused"].items()
    assert lane == "default|attentive_rest" and paused["status"] == status and paused["held"] == 2
    assert paused["reason"] == "unauthorized" and paused["since"].endswith("Z")
    for job_id in (first, second):
        assert redis_client.hget(keys.job(job_id), "attempts") == b"0", "a held job keeps its attempts"

    from typer.testing import CliRunner

    done = CliRunner().invoke(cli, ["resume", "default", "--json"], env=env_for(settings))
    assert done.exit_code == 0, done.output
    assert json.loads(done.output) == {"resumed": ["default|attentive_rest"], "released": 2}
    delivery.store.promote(int(datetime.now(UTC).timestamp() * 1000) + 10)
    delivery.pauses = Pauses(redis_client)  # a worker's view is at most a second old
    for job_id in (first, second):
        ticket = redis_client.hget(keys.job(job_id), "ticket").decode()
        assert delivery.run(job_id, ticket) == "delivered", [
            (r["status"], r.get("note")) for r in sandbox_requests(sandbox)
        ]
    assert stats(redis_client, settings)["paused"] == {}


def test_another_account_is_untouched_while_one_is_paused(redis_server, redis_client, sandbox):
    from conftest import make_settings

    settings = make_settings(
        redis_server.url, sandbox.url, attentive_accounts=json.dumps({"brand-b": {"token": TOKEN}})
    )
    from producers.producer import Producer

    producer = Producer(settings, redis_client)
    delivery = delivery_for(settings, redis_client)
    Pauses(redis_client).pause("default", "attentive_rest", "unauthorized", 401, 0)
    mine = producer.enqueue(EVENT)
    theirs = producer.enqueue({**EVENT, "account": "brand-b"})
    assert delivery.run(mine, ticket_for(mine, 0)) == "held:paused"
    assert delivery.run(theirs, ticket_for(theirs, 0)) == "delivered"


def test_resume_queues_the_held_jobs_in_batch_messages(settings, producer, redis_client, sandbox):
    held = 100
    Pauses(redis_client).pause("default", "attentive_rest", "unauthorized", 401, 0)
    ids = producer.enqueue_many([{**EVENT, "type": f"Held {i}"} for i in range(held)])
    redis_client.delete(settings.attentive_queue)  # the workers took the messages
    delivery = delivery_for(settings, redis_client)
    assert {delivery.run(j, ticket_for(j, 0)) for j in ids} == {"held:paused"}
    in_held_order = [i.decode() for i in redis_client.zrange(keys.held("default|attentive_rest"), 0, -1)]
    assert sorted(in_held_order) == sorted(ids)

    lanes, released = Pauses(redis_client).resume("default", None, int(datetime.now(UTC).timestamp() * 1000))
    assert (lanes, released) == (["default|attentive_rest"], held)
    messages = redis_client.lrange(settings.attentive_queue, 0, -1)[::-1]  # in the order workers take them
    assert [len(tickets_in(m)) for m in messages] == [MAX_BATCH] * (held // MAX_BATCH) + [held % MAX_BATCH]
    assert [t for m in messages for t in tickets_in(m)] == [ticket_for(j, 1) for j in in_held_order], (
        "oldest held first"
    )
    for raw in messages:
        message = json.loads(raw)
        batch_id, tickets = message["headers"]["id"], tickets_in(raw)
        assert raw.decode() == batch_message(
            batch_id, tickets, settings.attentive_queue, ["custom_event"] * len(tickets)
        )
        assert redis_client.get(keys.batch(batch_id)) == raw, "kept for the reconciler"
    assert redis_client.zcard(keys.SCHEDULE) == 0 and not redis_client.exists(keys.held("default|attentive_rest"))
    store = delivery.store
    found = store.reconcile(int(datetime.now(UTC).timestamp() * 1000) + store.orphan_ms + 1, limit=held)
    assert found is not None and found[:2] == (0, held), "the reconciler finds every released job's message"
    assert Pauses(redis_client).resume("default", None, 0) == ([], 0), "a second resume queues nothing again"

    delivery.pauses = Pauses(redis_client)
    for raw in messages:
        message = json.loads(raw)
        assert delivery.run_batch(message["headers"]["id"], tickets_in(raw)) == Counter(
            {"delivered": len(tickets_in(raw))}
        )
    assert len(sandbox_requests(sandbox)) == held


def test_release_leaves_a_job_the_promoter_queued_meanwhile(settings, producer, redis_client):
    from worker.held import HeldRelease

    lane = "default|attentive_rest"
    Pauses(redis_client).pause("default", "attentive_rest", "unauthorized", 401, 0)
    ids = producer.enqueue_many([{**EVENT, "type": f"Held {i}"} for i in range(3)])
    redis_client.delete(settings.attentive_queue)
    delivery = delivery_for(settings, redis_client)
    assert {delivery.run(j, ticket_for(j, 0)) for j in ids} == {"held:paused"}
    redis_client.zadd(keys.SCHEDULE, {ids[0]: 0})  # its hold ended: the promoter queues it
    assert delivery.store.promote(1)[0] == 1
    assert HeldRelease(redis_client).release(lane, 1) == 2
    tickets = [t for m in redis_client.lrange(settings.attentive_queue, 0, -1) for t in tickets_in(m)]
    assert sorted(tickets) == sorted(ticket_for(j, 1) for j in ids), "one message each, none twice"


def test_a_probe_resumes_a_lane_whose_token_is_accepted_again(settings, producer, redis_client, sandbox):
    from worker.destinations.attentive import AttentiveApi
    from worker.pause_probe import PauseProbe

    rest = AttentiveApi(settings)
    probe = PauseProbe(redis_client, settings, rest.whoami)
    pauses = Pauses(redis_client)
    pauses.pause("default", "attentive_rest", "unauthorized", 401, 0)
    pauses.pause("default", "attentive_graphql", "unauthorized", 403, 0)  # a scope: /v1/me cannot tell
    job = producer.enqueue(EVENT)
    redis_client.delete(settings.attentive_queue)
    assert delivery_for(settings, redis_client).run(job, ticket_for(job, 0)) == "held:paused"

    revoked = Account("default", SecretStr("revoked"))
    refused = PauseProbe(redis_client, settings, lambda _account: rest.whoami(revoked))
    assert refused.run_once() == [] and set(stats(redis_client, settings)["paused"]) == {
        "default|attentive_rest",
        "default|attentive_graphql",
    }, "a token still refused leaves the lane paused"
    assert probe.run_once() == [], "one probe per lane per period, across workers"
    redis_client.delete(keys.pause_probe("default|attentive_rest"))
    assert probe.run_once() == ["default|attentive_rest"]
    assert list(stats(redis_client, settings)["paused"]) == ["default|attentive_graphql"]
    assert tickets_in(redis_client.lindex(settings.attentive_queue, 0)) == [ticket_for(job, 1)], "its held job queued"
