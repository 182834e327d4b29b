"""A brand paused, not burned (`worker.pause`): a 401 or 403 holds an account's deliveries to
a destination instead of dead-lettering its backlog; ``resume`` sends them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from producers import keys
from producers.errors import Unauthorized
from producers.queue import ticket_for
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
