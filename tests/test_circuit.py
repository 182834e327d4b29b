"""The circuit breaker (`worker.circuit`): sustained failure at an account's destination
stops its requests, a probe closes the circuit again, and held jobs keep their attempts."""

from __future__ import annotations

import time

from producers.producer import Producer
from producers.store import keys
from producers.store.message import ticket_for, tickets_in
from worker.circuit import Window
from worker.counters import stats

from conftest import add_fault, delivery_for, make_settings, sandbox_requests, wait_for

EVENT = {"kind": "custom_event", "type": "Order Shipped", "user": {"phone": "+14155552671"}}


def test_a_window_opens_past_the_share_and_only_with_enough_requests():
    window = Window(window_s=60, min_requests=20, failure_share=0.5)
    assert not any(window.add(t, True) for t in range(19)), "19 failures are too few to judge"
    assert window.add(19, True)
    even = Window(window_s=60, min_requests=20, failure_share=0.5)
    assert not any(even.add(t, t % 2 == 1) for t in range(40)), "half failed is not more than half"
    sliding = Window(window_s=10, min_requests=3, failure_share=0.5)
    assert not sliding.add(0, True) and not sliding.add(1, True)
    assert not sliding.add(20, True), "the old failures left the window"


def test_a_failing_destination_opens_the_circuit_holds_jobs_and_a_probe_closes_it(redis_server, redis_client, sandbox):
    settings = make_settings(
        redis_server.url,
        sandbox.url,
        attentive_circuit_min_requests=4,
        attentive_circuit_probe_s=1.0,
        attentive_max_attempts=9,
    )
    producer = Producer(settings, redis_client)
    delivery = delivery_for(settings, redis_client)
    add_fault(sandbox, status=500, times=4)
    failing = [producer.enqueue({**EVENT, "type": f"Down {i}"}) for i in range(4)]
    assert [delivery.run(j, ticket_for(j, 0)) for j in failing] == ["retry_in_0.1s"] * 4
    [(lane, circuit)] = stats(redis_client, settings)["circuits"].items()
    assert lane == "default|attentive_rest" and circuit["requests"] == 4 and circuit["failed"] == 4

    held = producer.enqueue({**EVENT, "type": "Held"})
    assert delivery.run(held, ticket_for(held, 0)) == "held:circuit_open"
    assert len(sandbox_requests(sandbox)) == 4, "no request while the circuit is open"
    assert redis_client.hget(keys.job(held), "attempts") == b"0", "a held job keeps its attempts"
    assert stats(redis_client, settings)["circuits"][lane]["held"] == 1

    time.sleep(1.1)
    probe = producer.enqueue({**EVENT, "type": "Probe"})
    assert delivery.run(probe, ticket_for(probe, 0)) == "delivered"
    assert stats(redis_client, settings)["circuits"] == {}
    assert redis_client.hget(keys.job(held), "state") == b"scheduled", "held until every worker has seen it closed"
    wait_for(lambda: redis_client.hget(keys.job(held), "state") == b"queued", 3, "the held job queued after a second")
    assert tickets_in(redis_client.lindex(settings.attentive_queue, 0)) == [ticket_for(held, 1)], "the newest message"
    assert delivery.run(held, ticket_for(held, 1)) == "delivered"
