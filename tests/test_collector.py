"""The Segment-compatible collector, driven by Segment's own Python library and by raw HTTP."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from pydantic import SecretStr
from segment.analytics import Client

from producers.errors import ConfigurationError
from producers.producer import Producer
from producers.settings import Settings
from producers.store import keys
from producers.store.message import job_of, tickets_in
from worker.collector.app import CollectorApp
from worker.collector.background import Collector
from worker.collector.body import MAX_BODY, TOO_LARGE, BodyError, read_body
from worker.collector.policy import FailureLimiter, WriteKeys, key_fingerprint
from worker.counters import stats
from worker.local.processes import free_port

from conftest import make_settings, queued_count, sandbox_requests, wait_for

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
    wait_for(lambda: stats(redis_client, collector_settings)["delivered"] == 5, 30, "the five Attentive calls")
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
    assert queued_count(redis_client, "attentive") == 1


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
    assert queued_count(redis_client, "attentive") == 1


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
    with pytest.raises(ConfigurationError, match="COLLECTOR_WRITE_KEYS"):
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
    assert result.returncode == 1 and queued_count(redis_client, "attentive") == 2


def test_a_message_is_queued_whole_or_not_at_all(collector, redis_client):
    """An identify whose attributes call is invalid does not leave its identity call queued alone."""
    identify = {"type": "identify", "userId": "u-1", "traits": {**TRAITS, "x" * 201: "too long a name"}}
    response = post(collector, "/v1/batch", {"batch": [identify]})
    assert response.status_code == 400 and response.json()["accepted"] == 0
    assert queued_count(redis_client, "attentive") == 0


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
    assert answer["accepted"] == 2 and queued_count(redis_client, "attentive") == 2
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
    assert queued_count(redis_client, "attentive") == 2


# ------------------------------------------------- a public endpoint: connections, framing, browsers, keys

BROWSER = "https://shop.example"
PAGE = {"type": "page", "userId": "u-1", "name": "Home", "context": {"traits": TRAITS}}


def queued_jobs(redis_client, queue: str = "attentive") -> list[dict]:
    ids = [job_of(t) for message in redis_client.lrange(queue, 0, -1) for t in tickets_in(message)]
    return [json.loads(redis_client.hget(keys.job(job_id), "job")) for job_id in ids]


def raw_request(collector: Collector, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes on a fresh connection; everything the server answers until it closes or goes quiet."""
    host, port = collector.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            pass
        return answer


def test_idle_connections_neither_block_requests_nor_stay_open(collector_settings, redis_client):
    """Sockets that send nothing, or a header byte now and then, are closed after the head deadline."""
    with Collector(Producer(collector_settings, redis_client), port=0, head_timeout_s=1.0) as c:
        host, port = c.url.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(300)]
        slow = socket.create_connection((host, int(port)), timeout=5)
        try:
            started = time.monotonic()
            response = post(c, "/v1/batch", {"batch": [PAGE]}, timeout=2)
            assert response.status_code == 200 and time.monotonic() - started < 1.0
            opened = time.monotonic()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for byte in b"POST /v1/batch HTTP/1.1\r\n"[:8]:
                    slow.sendall(bytes([byte]))  # a byte every 0.3 s never completes a head
                    time.sleep(0.3)
            for sock in [*idle, slow]:
                sock.settimeout(max(0.1, opened + 4 - time.monotonic()))
                assert sock.recv(1) == b"", "an idle connection was not closed"
            assert time.monotonic() - opened < 4
        finally:
            for sock in [*idle, slow]:
                sock.close()


def test_a_chunked_body_is_read_as_the_body_and_the_connection_stays_in_step(collector, redis_client):
    body = json.dumps({"batch": [PAGE]}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    auth = base64.b64encode(f"{KEY}:".encode())
    head = b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Basic %s\r\nTransfer-Encoding: chunked\r\n\r\n" % auth
    then = b"POST /v1/alias HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    answer = raw_request(collector, head + chunked + then)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b'{"success": true, "accepted": 1, "skipped": 0}' in answer
    assert answer.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 404 " in answer  # the next request, in step
    assert queued_count(redis_client, "attentive") == 1
    # a chunked body past the limit is refused as it streams
    big = httpx.post(collector.url + "/v1/batch", content=iter([b'{"batch": [' + b" " * 300_000] * 2), auth=(KEY, ""))
    assert big.status_code == 413


@pytest.fixture
def browser_collector(redis_server, sandbox, redis_client) -> Iterator[Collector]:
    settings = make_settings(
        redis_server.url,
        sandbox.url,
        collector_write_keys=KEY,
        collector_allowed_origins=f"{BROWSER}, https://b.example/",
    )
    with Collector(Producer(settings, redis_client), port=0) as c:
        yield c


def test_preflight_from_an_allowed_origin_gets_cors_headers_and_others_403(browser_collector):
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = httpx.options(browser_collector.url + "/v1/batch", headers={"Origin": BROWSER, **ask})
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == BROWSER
    assert allowed.headers["vary"] == "Origin"
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert {"authorization", "content-type"} <= {
        h.strip().lower() for h in allowed.headers["access-control-allow-headers"].split(",")
    }
    assert int(allowed.headers["access-control-max-age"]) > 0
    assert httpx.options(browser_collector.url + "/v1/batch", headers={"Origin": "https://b.example", **ask}).is_success
    foreign = httpx.options(browser_collector.url + "/v1/batch", headers={"Origin": "https://evil.example", **ask})
    assert foreign.status_code == 403 and "access-control-allow-origin" not in foreign.headers
    assert httpx.options(browser_collector.url + "/v1/track").status_code == 204  # no Origin: not a preflight


def test_a_post_from_a_foreign_origin_is_403_and_queues_nothing(browser_collector, collector, redis_client):
    body = {"batch": [PAGE], "writeKey": KEY}
    for c, origin in ((browser_collector, "https://evil.example"), (collector, BROWSER)):
        response = httpx.post(c.url + "/v1/batch", content=json.dumps(body), headers={"Origin": origin})
        assert response.status_code == 403
    assert queued_count(redis_client, "attentive") == 0
    # analytics.js posts text/plain with the key in the body (no preflight)
    ok = httpx.post(
        browser_collector.url + "/v1/batch",
        content=json.dumps(body),
        headers={"Origin": BROWSER, "Content-Type": "text/plain"},
    )
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == BROWSER
    assert queued_count(redis_client, "attentive") == 1


def test_a_retried_browser_request_is_the_same_events(browser_collector, redis_client):
    """A browser that saw no answer sends the batch again with the same messageIds: nothing new is queued."""
    viewed = {
        "type": "track",
        "userId": "u-1",
        "event": "Product Viewed",
        "properties": {"product_id": "p-1", "price": 5},
        "messageId": "ajs-next-1",
    }
    batch = {"batch": [viewed, {**PAGE, "messageId": "ajs-next-2"}], "writeKey": KEY}
    headers = {"Origin": BROWSER, "Content-Type": "text/plain"}
    first = httpx.post(browser_collector.url + "/v1/batch", content=json.dumps(batch), headers=headers)
    assert first.json() == {"success": True, "accepted": 2, "skipped": 0}
    again = httpx.post(browser_collector.url + "/v1/batch", content=json.dumps(batch), headers=headers)
    assert again.json() == {"success": True, "accepted": 0, "skipped": 2}
    jobs = queued_jobs(redis_client)
    assert sorted(j["kind"] for j in jobs) == ["custom_event", "product_view"]
    assert [j["externalEventId"] for j in jobs if j["kind"] == "custom_event"] == ["ajs-next-2"]
    assert stats(redis_client, browser_collector.app.producer.settings)["skipped"]["duplicate"] == 2
    # the same message twice in one request is queued once too
    twice = {"batch": [{**PAGE, "messageId": "ajs-next-3"}] * 2, "writeKey": KEY}
    assert httpx.post(browser_collector.url + "/v1/batch", json=twice).json()["accepted"] == 1


def test_a_message_id_over_128_characters_is_accepted_and_its_resend_left_out(collector, redis_client):
    long_id = "ajs-next-" + "b" * 300
    first = post(collector, "/v1/page", {**PAGE, "messageId": long_id})
    assert first.json() == {"success": True, "accepted": 1, "skipped": 0}
    again = post(collector, "/v1/page", {**PAGE, "messageId": long_id})
    assert again.json() == {"success": True, "accepted": 0, "skipped": 1}
    [job] = queued_jobs(redis_client)
    assert len(job["externalEventId"]) <= 128 and long_id not in json.dumps(job)


def test_a_refused_key_is_logged_as_a_hash_and_repeated_failures_get_429(collector_settings, redis_client, caplog):
    body = {"type": "track", "userId": "u-1", "event": "X"}
    limiter = FailureLimiter(limit=3, window_s=60, block_s=60)
    with (
        Collector(Producer(collector_settings, redis_client), port=0, limiter=limiter) as c,
        caplog.at_level(logging.WARNING, logger="attentive_relay.collector"),
    ):
        answers = [post(c, "/v1/track", body, key=f"guess-{i}").status_code for i in range(3)]
        assert answers == [401, 401, 401]
        blocked = post(c, "/v1/track", body)  # even the right key, from a blocked address
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert queued_count(redis_client, "attentive") == 0
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert key_fingerprint("guess-0") in logged and "guess-0" not in logged
    assert "address blocked" in logged


def test_keys_are_compared_whole_and_kept_secret(collector_settings):
    keys_ = WriteKeys(collector_settings.write_keys)
    assert keys_.accepts(KEY) and keys_.accepts("other-key")
    assert not any(keys_.accepts(k) for k in (None, "", KEY[:-1], KEY + "x", "\udcff", "wrïte"))
    assert KEY not in repr(collector_settings) and KEY not in str(collector_settings.write_keys)


BRANDS = '{"brand-a": {}, "brand-b": {}}'


def test_each_write_key_queues_its_messages_for_its_account(redis_server, redis_client, sandbox):
    settings = make_settings(
        redis_server.url,
        sandbox.url,
        attentive_accounts=BRANDS,
        collector_write_keys=f"key-a:brand-a, key-b : brand-b,{KEY}",
    )
    message = {"type": "track", "userId": "u-1", "event": "Fine", "context": {"traits": TRAITS}}
    with Collector(Producer(settings, redis_client), port=0) as c:
        for key in ("key-a", "key-b", "key-b", KEY):
            assert post(c, "/v1/track", message, key=key).json()["accepted"] == 1, key
        suffixed = httpx.post(c.url + "/v1/track", json={**message, "writeKey": "key-a:brand-a"})
        assert suffixed.status_code == 401, "KEY:ACCOUNT is not itself a key"
    for queue, account, count in (("attentive.brand-a", "brand-a", 1), ("attentive.brand-b", "brand-b", 2)):
        jobs = queued_jobs(redis_client, queue)
        assert len(jobs) == count and all(j["account"] == account for j in jobs), queue
    default = queued_jobs(redis_client)
    assert len(default) == 1 and "account" not in default[0], "a bare key is the default account's, as before"
    records = [redis_client.hget(k, "account") for k in redis_client.scan_iter(keys.job("*"))]
    assert sorted(records) == [b"brand-a", b"brand-b", b"brand-b", b"default"]


def test_duplicates_are_judged_per_account_not_across_accounts(redis_server, redis_client, sandbox):
    """Segment dedupes per source: one brand's messageId says nothing about another brand's."""
    settings = make_settings(
        redis_server.url,
        sandbox.url,
        attentive_accounts=BRANDS,
        collector_write_keys=f"key-a:brand-a, key-a2:brand-a, key-b:brand-b, {KEY}",
    )
    message = {**PAGE, "messageId": "ajs-next-same"}
    with Collector(Producer(settings, redis_client), port=0) as c:
        for key in ("key-a", "key-b", KEY):
            assert post(c, "/v1/page", message, key=key).json() == {"success": True, "accepted": 1, "skipped": 0}, key
        for key in ("key-a", "key-a2", "key-b", KEY):  # a second key of brand-a is the same source
            assert post(c, "/v1/page", message, key=key).json() == {"success": True, "accepted": 0, "skipped": 1}, key
    for queue in ("attentive.brand-a", "attentive.brand-b", "attentive"):
        assert [j["externalEventId"] for j in queued_jobs(redis_client, queue)] == ["ajs-next-same"], queue
    # the default account's marker is the one it always was, so an upgrade keeps its duplicates out
    assert redis_client.exists(keys.seen("ajs-next-same"))


def test_write_keys_naming_unknown_accounts_or_misshapen_stop_start_up(redis_server):
    def start(write_keys: str, accounts: str = BRANDS) -> str:
        settings = make_settings(redis_server.url, attentive_accounts=accounts, collector_write_keys=write_keys)
        with pytest.raises(ConfigurationError) as caught:
            CollectorApp(Producer(settings))
        return str(caught.value)

    unknown = start("sekrit-1:brand-a,sekrit-2:brand-z")
    assert "brand-z" in unknown and "ATTENTIVE_ACCOUNTS" in unknown and "sekrit" not in unknown
    for misshapen in ("sekrit:brand-a:x", ":brand-a", "sekrit:", "sekrit:bad name"):
        said = start(f"fine,{misshapen}")
        assert "COLLECTOR_WRITE_KEYS entry 2" in said and "sekrit" not in said, misshapen
    twice = start("sekrit:brand-a,sekrit:brand-b")
    assert "brand-a" in twice and "brand-b" in twice and "sekrit" not in twice
    same = make_settings(redis_server.url, attentive_accounts=BRANDS, collector_write_keys="k:brand-a, k:brand-a")
    assert [(k.get_secret_value(), a) for k, a in same.write_keys] == [("k", "brand-a")]


def test_the_matched_key_yields_its_account_after_comparing_every_key(monkeypatch):
    from worker.collector import policy as collector_policy

    compared: list[bytes] = []
    real = collector_policy.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    keys_ = WriteKeys([(SecretStr("k-1"), "brand-a"), (SecretStr("k-2"), "default"), (SecretStr("k-3"), "brand-b")])
    monkeypatch.setattr(collector_policy.hmac, "compare_digest", counting)
    assert keys_.account_of("k-1") == "brand-a" and keys_.account_of("k-2") == "default"
    assert keys_.account_of("k-3") == "brand-b" and keys_.account_of("k-4") is None and keys_.account_of("") is None
    assert compared == [b"k-1", b"k-2", b"k-3"] * 5, "no early exit"
    assert keys_.accounts == {"brand-a", "brand-b", "default"}


def test_a_gzip_bomb_is_refused_without_being_inflated_whole(collector, redis_client):
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    bomb = b"".join(deflate.compress(zeros) for _ in range(400)) + deflate.flush()  # 400 MB inflated
    assert len(bomb) < 500 * 1024
    tracemalloc.start()
    try:
        response = httpx.post(
            collector.url + "/v1/batch",
            content=iter([bomb[i : i + 65536] for i in range(0, len(bomb), 65536)]),  # chunked, no length
            auth=(KEY, ""),
            headers={"Content-Encoding": "gzip"},
            timeout=10,
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert response.status_code == 413
    assert peak < 30 * 1024 * 1024, f"{peak} bytes allocated while refusing the bomb"
    assert queued_count(redis_client, "attentive") == 0


def deflated(data: bytes, wbits: int, level: int = 6) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, wbits)
    return compressor.compress(data) + compressor.flush()


def read_in_pieces(data: bytes, encoding: str, piece: int) -> bytes:
    """`read_body` of ``data`` arriving ``piece`` bytes at a time."""
    pieces = [data[i : i + piece] for i in range(0, len(data), piece)] or [b""]
    messages = iter(
        [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]
    )

    async def receive() -> dict:
        return next(messages)

    return anyio.run(read_body, receive, {"content-encoding": encoding})


DEFLATES = pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])


@DEFLATES
def test_a_deflate_body_is_inflated_whether_zlib_wrapped_or_raw(collector, redis_client, wbits):
    body = json.dumps({"batch": [{**PAGE, "messageId": f"m-{i}"} for i in range(3)]}).encode()
    data = deflated(body, wbits)
    response = httpx.post(
        collector.url + "/v1/batch",
        content=data,
        auth=(KEY, ""),
        headers={"Content-Encoding": "Deflate", "Content-Type": "application/json"},
    )
    assert response.json() == {"success": True, "accepted": 3, "skipped": 0}
    assert queued_count(redis_client, "attentive") == 3
    for piece in (1, 2, 3, 1000):  # the header (or its absence) may arrive split
        assert read_in_pieces(data, "deflate", piece) == body
        assert read_in_pieces(deflated(body, wbits, level=0), "deflate", piece) == body  # stored blocks


@DEFLATES
def test_a_deflate_bomb_is_refused_like_a_gzip_one(collector, redis_client, wbits):
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    zeros = bytes(1 << 20)
    bomb = b"".join(compressor.compress(zeros) for _ in range(100)) + compressor.flush()  # 100 MB inflated
    tracemalloc.start()
    try:
        response = httpx.post(
            collector.url + "/v1/batch",
            content=iter([bomb[i : i + 65536] for i in range(0, len(bomb), 65536)]),
            auth=(KEY, ""),
            headers={"Content-Encoding": "deflate"},
            timeout=10,
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert response.status_code == 413 and response.json()["message"] == TOO_LARGE
    assert peak < 30 * 1024 * 1024, f"{peak} bytes allocated while refusing the bomb"
    just_over = deflated(b" " * (MAX_BODY + 1), wbits)
    with pytest.raises(BodyError) as caught:
        read_in_pieces(just_over, "deflate", 4096)
    assert (caught.value.status, str(caught.value)) == (413, TOO_LARGE)
    assert read_in_pieces(deflated(b" " * MAX_BODY, wbits), "deflate", 4096) == b" " * MAX_BODY
    assert queued_count(redis_client, "attentive") == 0


@DEFLATES
def test_a_broken_deflate_body_is_a_400(wbits):
    good = deflated(json.dumps({"batch": []}).encode(), wbits)
    for broken in (b"not deflate at all", good[:-3], good + b"trailing", b""):
        with pytest.raises(BodyError) as caught:
            read_in_pieces(broken, "deflate", 5)
        assert (caught.value.status, str(caught.value)) == (400, "body is not valid deflate"), broken


def test_collect_serves_from_several_processes_restarts_a_dead_one_and_stops_on_sigterm(redis_server, redis_client):
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_server.url, "COLLECTOR_WRITE_KEYS": KEY, "ATTENTIVE_LOG_FORMAT": "text"}
    cmd = [sys.executable, "-m", "worker.cli", "collect", "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def workers() -> list[int]:
        return [
            int(p)
            for t in os.listdir(f"/proc/{proc.pid}/task")
            for p in open(f"/proc/{proc.pid}/task/{t}/children").read().split()
        ]

    def answering() -> bool:
        try:
            return httpx.options(url + "/v1/batch", timeout=1).status_code == 204
        except httpx.HTTPError:
            return False

    try:
        wait_for(lambda: answering() and len(workers()) == 2, 30, "two collector workers")
        assert httpx.post(url + "/v1/batch", json={"batch": [PAGE]}, auth=(KEY, "")).json()["accepted"] == 1
        first = workers()
        os.kill(first[0], signal.SIGKILL)
        wait_for(lambda: len(workers()) == 2 and first[0] not in workers(), 15, "a new worker")
        wait_for(answering, 15, "the collector answering again")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert queued_count(redis_client, "attentive") == 1


def test_connections_past_the_cap_are_closed_at_once_and_the_held_ones_still_served(collector_settings, redis_client):
    with Collector(Producer(collector_settings, redis_client), port=0, max_connections=20) as c:
        host, port = c.url.removeprefix("http://").split(":")
        held = [socket.create_connection((host, int(port)), timeout=5) for _ in range(20)]
        extra = [socket.create_connection((host, int(port)), timeout=5) for _ in range(5)]
        try:
            assert all(s.recv(1) == b"" for s in extra), "a connection past the cap was kept"
            auth = base64.b64encode(f"{KEY}:".encode())
            body = json.dumps({"batch": [PAGE]}).encode()
            request = b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Basic %s\r\nContent-Length: %d\r\n\r\n%s"
            held[0].sendall(request % (auth, len(body), body))
            assert held[0].recv(65536).startswith(b"HTTP/1.1 200 ")
        finally:
            for s in held + extra:
                s.close()


def test_a_slow_body_gets_408_and_a_full_process_503(collector_settings, redis_client):
    auth = base64.b64encode(f"{KEY}:".encode())
    head = b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Basic %s\r\nContent-Length: 100\r\n\r\n" % auth
    with Collector(Producer(collector_settings, redis_client), port=0, body_timeout_s=0.5) as c:
        started = time.monotonic()
        answer = raw_request(c, head + b'{"batch": ')  # and nothing more
        assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < 3
    with Collector(Producer(collector_settings, redis_client), port=0, max_in_progress=0) as full:
        busy = post(full, "/v1/batch", {"batch": [PAGE]})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    with Collector(Producer(collector_settings, redis_client), port=0) as c:
        c.app.budget.limit = 100  # bytes of bodies the process may hold
        assert post(c, "/v1/batch", {"batch": [PAGE]}).status_code == 503
        assert c.app.budget.held == 0
    assert queued_count(redis_client, "attentive") == 0


def test_clients_trickling_bodies_do_not_crowd_out_the_others(collector):
    """More slow senders than requests a process handles at once: bodies are bounded by bytes, not count."""
    host, port = collector.url.removeprefix("http://").split(":")
    auth = base64.b64encode(f"{KEY}:".encode())
    head = b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Basic %s\r\nContent-Length: 1000\r\n\r\n" % auth
    slow = [socket.create_connection((host, int(port)), timeout=5) for _ in range(100)]
    try:
        for s in slow:
            s.sendall(head + b'{"batch": ')
        time.sleep(0.3)
        response = post(collector, "/v1/batch", {"batch": [PAGE]}, timeout=5)
        assert response.status_code == 200 and response.json()["accepted"] == 1
    finally:
        for s in slow:
            s.close()
