"""Yotpo custom events: the job's rules at enqueue, the client (MockTransport), and whole
deliveries to the sandbox's Yotpo stand-in, one store per account."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from test_delivery import dead_entry, run_until_done

from producers.accounts import DEFAULT
from producers.errors import InvalidJob, RateLimited, Rejected, ServerError, Unauthorized
from producers.job.validation import job_json, parse_job
from producers.producer import Producer
from producers.segment import yotpo as segment_yotpo
from producers.segment.mapping import Skip
from producers.settings import Settings
from producers.store.erasure import mentions
from producers.store.message import ticket_for
from worker.destinations import Destinations
from worker.destinations.base import credential_tag
from worker.destinations.yotpo import PATH, Yotpo, classify
from worker.pause import Pauses

from conftest import TOKEN, add_fault, delivery_for, make_settings, sandbox_requests

NOW = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
EVENT_ID = "0b9c8a2e-5f1d-4c3b-9a7e-2d4f6b8c0e1a"
JOB: dict[str, Any] = {
    "kind": "yotpo_custom_event",
    "source": "attentive_relay",
    "type": "order_shipped",
    "customer": {"phone_number": "(415) 555-2671", "properties": {"tier": "gold", "points": 3, "vip": True}},
    "properties": {"carrier": "UPS", "weight_kg": 1.5},
}
STORES = {"store-a": "ytok-a", "store-b": "ytok-b"}
BRAND_B = json.dumps({"brand-b": {"token": TOKEN, "yotpo_store_id": "store-b", "yotpo_access_token": "ytok-b"}})


def parse(job: dict[str, Any], settings: Settings | None = None, at_enqueue: bool = True) -> Any:
    return parse_job(job, settings or Settings(), NOW, at_enqueue=at_enqueue)


def problems(job: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidJob) as caught:
        parse(job)
    return [str(p) for p in caught.value.problems]


# ---------------------------------------------------------------- the job's rules


def test_enqueue_stamps_occurred_at_and_a_uuid_event_id_and_normalizes_the_phone() -> None:
    job = parse(JOB)
    assert job.occurred_at == NOW and isinstance(job.event_id, uuid.UUID)
    stored = json.loads(job_json(job))
    assert stored["customer"]["phone_number"] == "+14155552671"
    assert stored["event_id"] == str(job.event_id) and stored["occurred_at"] == "2026-01-31T12:00:00Z"
    again = parse(stored, at_enqueue=False)
    assert again == job, "the stored job reads back as itself: every attempt sends the same event id"


def test_delivery_stamps_nothing() -> None:
    with pytest.raises(InvalidJob) as caught:
        parse(JOB, at_enqueue=False)
    assert {"occurred_at: is required", "event_id: is required"} <= {str(p) for p in caught.value.problems}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"customer": {"phone_number": "+14155552671", "email": "jane@example.com"}}, "customer"),
        ({"customer": {}}, "customer"),
        ({"customer": {"properties": {"a": 1}}}, "customer"),
        ({"type": "Order Shipped"}, "type"),
        ({"type": "order__shipped"}, "type"),
        ({"type": "_order"}, "type"),
        ({"type": "x" * 256}, "type"),
        ({"source": "My-App"}, "source"),
        ({"source": ""}, "source"),
        ({"event_id": "not-a-uuid"}, "event_id"),
        ({"event_id": 12}, "event_id"),
        ({"occurred_at": "2026-01-31 12:00"}, "occurred_at"),
        ({"occurred_at": "2026-01-31T12:00:00"}, "occurred_at"),
        ({"properties": {"coupon": None}}, "properties"),
        ({"properties": {"items": [1, 2]}}, "properties"),
        ({"customer": {"email": "jane@example.com", "properties": {"first name": "Jane"}}}, "customer.properties"),
        ({"customer": {"email": "jane@example.com", "properties": {"nick": None}}}, "customer.properties"),
        ({"customer": {"phone_number": "999 888 77"}}, "customer.phone_number"),
        ({"customer": {"email": "nope"}}, "customer.email"),
        ({"properties": {"note": "card 4111 1111 1111 1111"}}, "properties.note"),
        ({"account": "nobody"}, "account"),
        ({"occurredAt": "2026-01-31T12:00:00Z"}, "occurredAt"),
    ],
)
def test_invalid_jobs_are_refused_at_enqueue_naming_the_field(change: dict[str, Any], field: str) -> None:
    found = problems({**JOB, **change})
    assert any(p.startswith(f"{field}: ") for p in found), found
    assert "Jane" not in " ".join(found) and "4111" not in " ".join(found)


def test_valid_identifications() -> None:
    both_with_external_id = {"external_id": "u-1", "phone_number": "+14155552671", "email": "jane@example.com"}
    assert parse({**JOB, "customer": both_with_external_id}).customer.email == "jane@example.com"
    assert parse({**JOB, "customer": {"email": "jane@example.com"}}).customer.phone_number is None
    assert parse({**JOB, "customer": {"external_id": "u-1"}, "event_id": EVENT_ID}).event_id == uuid.UUID(EVENT_ID)


def test_no_freshness_window_and_the_kind_is_listed() -> None:
    old = parse({**JOB, "occurred_at": (NOW - timedelta(days=30)).isoformat()})
    assert old.occurred_at == NOW - timedelta(days=30)
    assert not hasattr(old, "occurredAt")
    assert "yotpo_custom_event" in problems({**JOB, "kind": "yotpo"})[0]


def test_erasure_finds_the_phone_number_and_the_email() -> None:
    customer = {"external_id": "u-1", "phone_number": "+14155552671", "email": "Jane@Example.com"}
    assert mentions(job_json(parse({**JOB, "customer": customer}))) == {"+14155552671", "jane@example.com"}


def test_a_phone_number_is_never_taken_for_a_card_number() -> None:
    # +49 1511 2345678 is a valid German mobile number whose digits pass Luhn in Visa's range.
    assert parse({**JOB, "customer": {"phone_number": "+4915112345678"}}).customer.phone_number == "+4915112345678"


# ---------------------------------------------------------------- the client


def yotpo_settings(**kw: Any) -> Settings:
    return Settings(
        yotpo_base_url="https://api.yotpo.test", yotpo_store_id="store-a", yotpo_access_token="ytok-a", **kw
    )


def test_the_request_carries_the_store_in_the_path_and_the_token_in_a_header_only() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"event_id": EVENT_ID}, headers={"RateLimit-Remaining": "0"})

    settings = yotpo_settings()
    job = parse({**JOB, "event_id": EVENT_ID}, settings)
    outcome = Yotpo(settings, httpx.MockTransport(handler)).deliver(job, settings.accounts[DEFAULT])
    assert outcome.error is None and outcome.ratelimit_remaining == 0
    [request] = seen
    assert str(request.url) == "https://api.yotpo.test/core/v3/stores/store-a/custom_events"
    assert request.headers["x-yotpo-token"] == "ytok-a" and "ytok" not in str(request.url)
    assert json.loads(request.content) == {
        "source": "attentive_relay",
        "type": "order_shipped",
        "occurred_at": "2026-01-31T12:00:00Z",
        "event_id": EVENT_ID,
        "customer": {"phone_number": "+14155552671", "properties": {"tier": "gold", "points": 3, "vip": True}},
        "properties": {"carrier": "UPS", "weight_kg": 1.5},
    }


@pytest.mark.parametrize(
    ("status", "headers", "expected", "retry_after"),
    [
        (429, {"RateLimit-Reset": "4", "RateLimit-Remaining": "0"}, RateLimited, 4.0),
        (429, {"Retry-After": "2", "RateLimit-Reset": "4"}, RateLimited, 2.0),
        (429, {}, RateLimited, None),
        (401, {}, Unauthorized, None),
        (403, {}, Unauthorized, None),
        (400, {}, Rejected, None),
        (404, {}, Rejected, None),
        (500, {}, ServerError, None),
        (503, {}, ServerError, None),
    ],
)
def test_statuses(status: int, headers: dict[str, str], expected: type, retry_after: float | None) -> None:
    error = classify(status, '{"errors": []}', httpx.Headers(headers))
    assert type(error) is expected and error is not None and error.body == '{"errors": []}'
    assert getattr(error, "retry_after", None) == retry_after
    assert classify(200, "", httpx.Headers()) is None


def test_missing_credentials_are_unauthorized_naming_the_setting() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    settings = Settings(yotpo_access_token="ytok-a", attentive_accounts=json.dumps({"brand-c": {"token": "t"}}))
    yotpo = Yotpo(settings, httpx.MockTransport(handler))
    job = parse(JOB, settings)
    assert "YOTPO_STORE_ID is not set" in str(yotpo.deliver(job, settings.accounts[DEFAULT]).error)
    outcome = yotpo.deliver(job, settings.accounts["brand-c"])
    assert isinstance(outcome.error, Unauthorized)
    assert str(outcome.error) == "ATTENTIVE_ACCOUNTS brand-c.yotpo_store_id is not set"


def test_each_store_has_its_own_bucket_and_the_job_goes_to_yotpo() -> None:
    settings = yotpo_settings(attentive_accounts=BRAND_B, yotpo_rate_limit=7)
    destinations = Destinations(settings)
    job = parse(JOB, settings)
    assert destinations.for_job(job) is destinations.yotpo
    a = destinations.yotpo.bucket(job, settings.accounts[DEFAULT])
    b = destinations.yotpo.bucket(job, settings.accounts["brand-b"])
    assert (a.lane, a.rate, a.tag) == ("yotpo", 7.0, credential_tag("store-a"))
    assert b.tag == credential_tag("store-b")
    assert destinations.yotpo.endpoint(job) == PATH
    destinations.close()


# ---------------------------------------------------------------- against the sandbox


@pytest.fixture
def ysettings(redis_server, redis_client, sandbox) -> Settings:
    httpx.post(f"{sandbox.url}/__sandbox/config", json={"yotpo_stores": STORES}).raise_for_status()
    return make_settings(
        redis_server.url,
        sandbox.url,
        yotpo_base_url=sandbox.url,
        yotpo_store_id="store-a",
        yotpo_access_token="ytok-a",
        attentive_accounts=BRAND_B,
    )


def test_a_yotpo_event_arrives_at_its_store(ysettings, redis_client, sandbox) -> None:
    job_id = Producer(ysettings, redis_client).enqueue(JOB)
    assert run_until_done(delivery_for(ysettings, redis_client), redis_client, job_id) == ["delivered"]
    [request] = sandbox_requests(sandbox)
    assert (request["path"], request["status"], request["note"]) == (
        "/core/v3/stores/store-a/custom_events",
        200,
        "accepted",
    )
    assert request["token_tag"] == credential_tag("ytok-a")
    body = request["body"]
    assert body["type"] == "order_shipped" and body["source"] == "attentive_relay"
    assert body["customer"] == {"phone_number": "+14155552671", "properties": JOB["customer"]["properties"]}
    assert uuid.UUID(body["event_id"]) and body["occurred_at"].endswith("Z") and "kind" not in body


def test_two_accounts_each_use_their_own_store_and_token(ysettings, redis_client, sandbox) -> None:
    producer = Producer(ysettings, redis_client)
    ids = [producer.enqueue(JOB), producer.enqueue({**JOB, "account": "brand-b"})]
    delivery = delivery_for(ysettings, redis_client)
    assert [run_until_done(delivery, redis_client, i) for i in ids] == [["delivered"], ["delivered"]]
    seen = [(r["path"], r["token_tag"], r["status"]) for r in sandbox_requests(sandbox)]
    assert seen == [
        ("/core/v3/stores/store-a/custom_events", credential_tag("ytok-a"), 200),
        ("/core/v3/stores/store-b/custom_events", credential_tag("ytok-b"), 200),
    ]


def test_a_retry_sends_the_same_event_id_and_a_resend_overwrites(ysettings, redis_client, sandbox) -> None:
    add_fault(sandbox, status=503, times=1)
    producer = Producer(ysettings, redis_client)
    job_id = producer.enqueue({**JOB, "event_id": EVENT_ID})
    assert run_until_done(delivery_for(ysettings, redis_client), redis_client, job_id)[-1] == "delivered"
    again = producer.enqueue({**JOB, "event_id": EVENT_ID, "type": "order_delivered"})
    assert run_until_done(delivery_for(ysettings, redis_client), redis_client, again) == ["delivered"]
    requests = sandbox_requests(sandbox)
    assert [(r["status"], r["note"]) for r in requests] == [(503, "fault"), (200, "accepted"), (200, "updated")]
    assert {r["body"]["event_id"] for r in requests} == {EVENT_ID}
    assert sandbox.state.yotpo_events[("store-a", EVENT_ID)]["type"] == "order_delivered"


def test_a_wrong_token_pauses_and_a_rejection_keeps_the_answer(redis_server, redis_client, sandbox) -> None:
    httpx.post(f"{sandbox.url}/__sandbox/config", json={"yotpo_stores": STORES}).raise_for_status()
    wrong = make_settings(
        redis_server.url, sandbox.url, yotpo_base_url=sandbox.url, yotpo_store_id="store-a", yotpo_access_token="x"
    )
    job_id = Producer(wrong, redis_client).enqueue(JOB)
    assert delivery_for(wrong, redis_client).run(job_id, ticket_for(job_id, 0)) == "held:unauthorized"
    assert Pauses(redis_client).resume("default", "yotpo", 0) == (["default|yotpo"], 1), "paused, not burned"
    add_fault(sandbox, status=422, times=1)
    job_id = Producer(wrong, redis_client).enqueue(JOB)
    httpx.post(f"{sandbox.url}/__sandbox/config", json={"yotpo_stores": {}}).raise_for_status()
    assert run_until_done(delivery_for(wrong, redis_client), redis_client, job_id) == ["dead:rejected"]
    assert json.loads(dead_entry(redis_client, job_id)["response"]) == {"status": 422, "error": "injected"}


def test_missing_yotpo_credentials_dead_letter_without_sending(redis_server, redis_client, sandbox) -> None:
    settings = make_settings(redis_server.url, sandbox.url, yotpo_base_url=sandbox.url)
    job_id = Producer(settings, redis_client).enqueue(JOB)
    assert run_until_done(delivery_for(settings, redis_client), redis_client, job_id) == ["dead:unauthorized"]
    assert "YOTPO_STORE_ID" in dead_entry(redis_client, job_id)["detail"]
    assert sandbox_requests(sandbox) == []


def test_an_old_yotpo_event_is_still_delivered(ysettings, redis_client, sandbox) -> None:
    old = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    job_id = Producer(ysettings, redis_client).enqueue({**JOB, "occurred_at": old})
    assert run_until_done(delivery_for(ysettings, redis_client), redis_client, job_id) == ["delivered"]


# ---------------------------------------------------------------- the stand-in itself


def test_the_stand_in_checks_store_token_body_and_rate(sandbox) -> None:
    httpx.post(f"{sandbox.url}/__sandbox/config", json={"yotpo_stores": STORES}).raise_for_status()
    body = json.loads(job_json(parse(JOB)))
    del body["kind"]

    def send(store: str = "store-a", token: str | None = "ytok-a", payload: Any = body, **kw: Any) -> httpx.Response:
        headers = {"X-Yotpo-Token": token} if token else {}
        return httpx.post(f"{sandbox.url}{PATH.format(store_id=store)}", json=payload, headers=headers, **kw)

    assert send().status_code == 200
    assert send(token=None).status_code == 401
    assert send(token="ytok-b").status_code == 401
    assert send(store="store-z").status_code == 404
    assert send(token=None, params={"access_token": "ytok-b"}, store="store-b").status_code == 200
    refused = send(store="store-b", token="ytok-b", payload={**body, "type": "Order Shipped", "event_id": "x"})
    assert refused.status_code == 400
    assert {e["field"] for e in refused.json()["errors"]} == {"type", "event_id"}
    statuses = [send(store="store-b", token="ytok-b").status_code for _ in range(11)]
    assert 429 in statuses and set(statuses) <= {200, 429}
    limited = next(r for r in (send(store="store-b", token="ytok-b") for _ in range(6)) if r.status_code == 429)
    assert limited.headers["RateLimit-Remaining"] == "0" and limited.headers["RateLimit-Reset"] == "1"
    tags = {r["token_tag"] for r in sandbox_requests(sandbox)}
    assert tags == {credential_tag("ytok-a"), credential_tag("ytok-b"), None}
    assert "ytok-a" not in json.dumps(sandbox_requests(sandbox))


# ---------------------------------------------------------------- the Segment fan-out

WHEN = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0).isoformat().replace("+00:00", "Z")
TRACK: dict[str, Any] = {
    "type": "track",
    "event": "Order Shipped",
    "userId": "u-42",
    "messageId": "msg-1",
    "timestamp": WHEN,
    "context": {"traits": {"phone": "(415) 555-2671", "email": "jane@example.com"}},
    "properties": {"carrier": "UPS", "box": {"size": "L", "dims": [30, 20]}, "gift note": "hi", "coupon": None},
}


def fan_out(message: dict[str, Any], **kw: Any) -> list[dict[str, Any]]:
    settings = Settings(attentive_segment_to_yotpo=True, **kw)
    prepared = Producer(settings, client=None).prepare_segment(message)
    assert isinstance(prepared, list)
    return [json.loads(job) for _, _, job in prepared]


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ("Order Shipped", "order_shipped"),
        ("checkoutStep 2", "checkout_step_2"),
        ("  Crème brûlée -- ordered!  ", "creme_brulee_ordered"),
        ("already_snake", "already_snake"),
        ("APIKeyCreated", "apikey_created"),
        ("x" * 300, "x" * 255),
        ("🎉", ""),
    ],
)
def test_snake_case(event: str, expected: str) -> None:
    assert segment_yotpo.snake_case(event) == expected


def test_flatten_keeps_primitives_only() -> None:
    assert segment_yotpo.flatten(TRACK["properties"]) == {
        "carrier": "UPS",
        "box_size": "L",
        "box_dims_0": 30,
        "box_dims_1": 20,
        "gift_note": "hi",
    }


def test_the_fan_out_is_off_by_default() -> None:
    prepared = Producer(Settings(), client=None).prepare_segment(TRACK)
    assert not isinstance(prepared, Skip) and [p.kind for p in prepared] == ["custom_event"]


def test_a_track_also_makes_a_yotpo_event() -> None:
    attentive, yotpo = fan_out(TRACK)
    assert attentive["kind"] == "custom_event" and attentive["type"] == "Order Shipped"
    assert yotpo == {
        "kind": "yotpo_custom_event",
        "source": "attentive_relay",
        "type": "order_shipped",
        "occurred_at": WHEN,
        "event_id": str(uuid.uuid5(segment_yotpo.NAMESPACE, "msg-1")),
        "customer": {"external_id": "u-42", "phone_number": "+14155552671", "email": "jane@example.com"},
        "properties": {"carrier": "UPS", "box_size": "L", "box_dims_0": 30, "box_dims_1": 20, "gift_note": "hi"},
    }
    assert fan_out(TRACK)[1]["event_id"] == yotpo["event_id"], "a resent message overwrites its event"
    assert fan_out(TRACK, yotpo_source="my_shop")[1]["source"] == "my_shop"


@pytest.mark.parametrize(
    ("traits", "customer"),
    [
        ({"phone": "+14155552671", "email": "jane@example.com"}, {"phone_number": "+14155552671"}),
        ({"email": "jane@example.com"}, {"email": "jane@example.com"}),
    ],
)
def test_without_a_user_id_exactly_one_identifier_the_phone_preferred(traits, customer) -> None:
    message = {k: v for k, v in TRACK.items() if k != "userId"} | {"context": {"traits": traits}}
    assert fan_out(message)[-1]["customer"] == customer


def test_pages_identifies_and_product_tracks() -> None:
    page = {"type": "page", "userId": "u-1", "name": "Home"}
    identify = {"type": "identify", "userId": "u-1", "traits": {"email": "jane@example.com", "plan": "gold"}}
    assert [j["kind"] for j in fan_out(page)] == ["custom_event"]
    assert "yotpo_custom_event" not in [j["kind"] for j in fan_out(identify)]
    viewed = {
        "type": "track",
        "userId": "u-1",
        "event": "Product Viewed",
        "properties": {"product_id": "p-1", "price": 5},
    }
    assert [j["kind"] for j in fan_out(viewed)] == ["product_view", "yotpo_custom_event"]
    assert fan_out(viewed)[1]["type"] == "product_viewed" and uuid.UUID(fan_out(viewed)[1]["event_id"])


def test_an_event_with_nothing_to_snake_case_refuses_the_message() -> None:
    with pytest.raises(InvalidJob) as caught:
        fan_out({**TRACK, "event": "🎉"})
    assert [str(p) for p in caught.value.problems] == ["event: has no letter or digit to make a Yotpo event type from"]


def test_the_fan_out_is_delivered_to_both(ysettings, redis_client, sandbox) -> None:
    settings = ysettings.model_copy(update={"attentive_segment_to_yotpo": True})
    producer = Producer(settings, redis_client)
    ids = producer.enqueue_segment(TRACK) + producer.enqueue_segment(TRACK, account="brand-b")
    delivery = delivery_for(settings, redis_client)
    assert [run_until_done(delivery, redis_client, i) for i in ids] == [["delivered"]] * 4
    seen = sorted((r["path"], r["token_tag"]) for r in sandbox_requests(sandbox))
    assert seen == sorted(
        [
            ("/v1/events/custom", credential_tag(TOKEN)),
            ("/v1/events/custom", credential_tag(TOKEN)),
            ("/core/v3/stores/store-a/custom_events", credential_tag("ytok-a")),
            ("/core/v3/stores/store-b/custom_events", credential_tag("ytok-b")),
        ]
    )


@pytest.mark.parametrize("module", ["producers.job.yotpo", "producers.segment.yotpo", "worker.destinations.yotpo"])
def test_each_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    # The job models are split over producers.job.models and producers.job.yotpo: no import order may break them.
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, timeout=60)
