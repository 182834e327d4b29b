"""The Segment-compatible collector, driven by Segment's own Python library and by raw HTTP."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from segment.analytics import Client

from producers.producer import Producer
from producers.settings import Settings
from worker.collector import Collector
from worker.counters import stats

from conftest import make_settings, sandbox_requests, wait_for

KEY = "write-key-1"
TRAITS = {"phone": "(415) 555-2671", "email": "jane@example.com"}


@pytest.fixture
def collector_settings(redis_server, sandbox) -> Settings:
    return make_settings(redis_server.url, sandbox.url, collector_write_keys=f"{KEY}, other-key")


@pytest.fixture
def collector(collector_settings, redis_client) -> Iterator[Collector]:
    with Collector(Producer(collector_settings, redis_client), port=0) as c:
        yield c


def post(collector: Collector, path: str, body: object, key: str = KEY, **kwargs) -> httpx.Response:
    return httpx.post(collector.url + path, json=body, auth=(key, ""), **kwargs)


def test_segment_library_calls_arrive_at_attentive_as_the_right_calls(
    collector, collector_settings, redis_client, sandbox, start_worker
):
    errors: list[object] = []
    client = Client(KEY, host=collector.url, sync_mode=True, on_error=lambda e, batch: errors.append(e))
    client.track("u-1", "Product Viewed", {"product_id": "p-1", "price": 19.99}, context={"traits": TRAITS})
    client.page(
        "u-1", name="Home", properties={"path": "/", "url": "https://shop.example/"}, context={"traits": TRAITS}
    )
    client.identify("u-1", {**TRAITS, "plan": "gold"})
    client.track("u-1", "Coupon Entered", {"coupon": "SAVE"}, context={"traits": TRAITS})
    assert errors == []
    start_worker(settings_=collector_settings)
    wait_for(lambda: stats(redis_client, "attentive")["delivered"] == 5, 30, "the five Attentive calls")
    calls = {(r["path"], (r["body"] or {}).get("type")): r["body"] for r in sandbox_requests(sandbox)}
    user = {"phone": "+14155552671", "email": "jane@example.com", "externalIdentifiers": {"clientUserId": "u-1"}}
    view = calls[("/v1/events/ecommerce/product-view", None)]
    assert view["user"] == user and view["items"] == [
        {"productId": "p-1", "productVariantId": "p-1", "price": [{"value": 19.99, "currency": "USD"}]}
    ]
    page = calls[("/v1/events/custom", "page")]
    assert page["properties"] == {"path": "/", "url": "https://shop.example/", "name": "Home"}
    assert page["externalEventId"] and page["occurredAt"].endswith("Z")
    assert calls[("/v1/attributes/custom", None)]["properties"] == {"plan": "gold"}
    assert calls[("/v1/identity-resolution/user-identifiers", None)] == {
        "phone": "+14155552671",
        "email": "jane@example.com",
        "clientUserId": "u-1",
    }
    assert calls[("/v1/events/custom", "Coupon Entered")]["properties"] == {"coupon": "SAVE"}


def test_unknown_write_keys_get_401_and_nothing_is_queued(collector, redis_client):
    body = {"type": "track", "userId": "u-1", "event": "X"}
    assert post(collector, "/v1/track", body, key="wrong").status_code == 401
    assert httpx.post(collector.url + "/v1/track", json=body).status_code == 401
    assert post(collector, "/v1/track", {**body, "writeKey": KEY}, key="").status_code == 401
    assert httpx.post(collector.url + "/v1/track", json={**body, "writeKey": "other-key"}).status_code == 200
    assert redis_client.llen("attentive") == 1


def test_bad_messages_get_400_with_problems_and_the_good_ones_are_kept(collector, redis_client):
    batch = {
        "batch": [
            {"type": "track", "userId": "u-1", "event": "Fine"},
            {"type": "track", "userId": "u-1", "event": "Order Completed", "properties": {"products": [{"id": "p"}]}},
            {"type": "track", "anonymousId": "a", "event": "Nobody"},
        ]
    }
    response = post(collector, "/v1/batch", batch)
    assert response.status_code == 400
    body = response.json()
    assert body["accepted"] == 1 and body["skipped"] == 1
    assert body["problems"] == [{"index": 1, "field": "properties.products[0].price", "rule": "is required"}]
    assert redis_client.llen("attentive") == 1


def test_size_limits_gzip_and_unknown_paths(collector, redis_client):
    huge = {"type": "track", "userId": "u-1", "event": "Big", "properties": {"blob": "x" * 600_000}}
    assert post(collector, "/v1/track", huge).status_code == 413
    big_message = {"type": "track", "userId": "u-1", "event": "Big", "properties": {"blob": "x" * 40_000}}
    assert "at most 32768 bytes" in post(collector, "/v1/track", big_message).json()["problems"][0]["rule"]
    data = gzip.compress(json.dumps({"batch": [{"type": "page", "userId": "u-1", "name": "Home"}]}).encode())
    zipped = httpx.post(
        collector.url + "/v1/batch",
        content=data,
        auth=(KEY, ""),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert zipped.status_code == 200 and zipped.json() == {"success": True, "accepted": 1, "skipped": 0}
    assert post(collector, "/v1/alias", {}).status_code == 404
    assert post(collector, "/v1/track", "not an object").status_code == 400


def test_redis_down_is_a_503_so_clients_retry(redis_client, sandbox):
    settings = make_settings("redis://127.0.0.1:9/0", sandbox.url, collector_write_keys=KEY)
    with Collector(Producer(settings), port=0) as down:
        response = post(down, "/v1/track", {"type": "track", "userId": "u-1", "event": "X"})
    assert response.status_code == 503


def test_a_collector_without_write_keys_refuses_to_start(redis_server):
    with pytest.raises(ValueError, match="COLLECTOR_WRITE_KEYS"):
        Collector(Producer(make_settings(redis_server.url)), port=0)


def test_cli_enqueues_segment_ndjson(settings, redis_client, tmp_path: Path):
    from test_cli import relay

    lines = [
        {"type": "identify", "userId": "u-1", "traits": {**TRAITS, "plan": "gold"}},
        {"type": "track", "anonymousId": "a", "event": "Nobody"},
        {"type": "track", "userId": "u-1", "event": "Order Completed"},
    ]
    source = tmp_path / "segment.ndjson"
    source.write_text("\n".join(json.dumps(m) for m in lines) + "\n")
    result = relay(["enqueue", "--segment", str(source), "--json"], settings)
    assert json.loads(result.stdout) == {"enqueued": 2, "invalid": 1, "skipped": 1}
    assert "line 3: invalid job: properties.products" in result.stderr
    assert result.returncode == 1 and redis_client.llen("attentive") == 2


def test_a_message_is_queued_whole_or_not_at_all(collector, redis_client):
    """An identify whose attributes call is invalid does not leave its identity call queued alone."""
    identify = {"type": "identify", "userId": "u-1", "traits": {**TRAITS, "x" * 201: "too long a name"}}
    response = post(collector, "/v1/batch", {"batch": [identify]})
    assert response.status_code == 400 and response.json()["accepted"] == 0
    assert redis_client.llen("attentive") == 0


def test_poison_messages_get_400_with_problems_and_the_good_ones_of_the_batch_are_queued(collector, redis_client):
    good = {"type": "track", "userId": "u-1", "event": "Fine"}
    viewed = {"type": "track", "userId": "u-1", "event": "Product Viewed"}
    poison = [
        ({**viewed, "properties": {"product_id": "p", "price": 1, "quantity": "@NaN@"}}, "properties.quantity"),
        ({**viewed, "properties": {"product_id": "p", "price": 1, "quantity": "@Infinity@"}}, "properties.quantity"),
        ({**viewed, "properties": {"product_id": "p", "price": "@1e400@"}}, "properties.price"),
        ({**good, "timestamp": "0001-01-01T00:00:00+01:00"}, "timestamp"),
        ({**good, "properties": {"n": "@123456789012345678901234567890@"}}, "properties.n"),
        ({**good, "properties": {"s": "\udcff"}}, "properties.s"),
    ]
    batch = [good] + [m for m, _ in poison] + [good]
    # NaN, Infinity and 1e400 as the bare JSON tokens a sloppy client sends, not as strings
    body = json.dumps({"batch": batch}).replace('"@', "").replace('@"', "")
    response = httpx.post(collector.url + "/v1/batch", content=body, auth=(KEY, ""))
    assert response.status_code == 400
    answer = response.json()
    assert answer["accepted"] == 2 and redis_client.llen("attentive") == 2
    assert [(p["index"], p["field"]) for p in answer["problems"]] == [
        (i, path) for i, (_, path) in enumerate(poison, 1)
    ]


def test_one_message_python_cannot_parse_does_not_make_the_batch_unreadable(collector, redis_client):
    good = json.dumps({"type": "track", "userId": "u-1", "event": "Fine"})
    track = '{"type": "track", "userId": "u-1", "event": "X", "properties": '
    long_number = track + '{"n": ' + "9" * 5000 + "}}"
    deep = track + '{"d": ' + "[" * 3000 + "]" * 3000 + "}}"
    body = '{"batch": [' + ", ".join([good, long_number, deep, good]) + "]}"
    response = httpx.post(collector.url + "/v1/batch", content=body, auth=(KEY, ""))
    assert response.status_code == 400 and response.json()["accepted"] == 2
    assert [(p["index"], p["field"][:12]) for p in response.json()["problems"]] == [
        (1, "properties.n"),
        (2, "properties.d"),
    ]
    assert redis_client.llen("attentive") == 2
