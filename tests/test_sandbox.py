"""The sandbox over real HTTP: auth, validation, rate limits, faults, staleness, attributes."""

from __future__ import annotations

import http.client
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from worker.destinations.attentive_graphql import MUTATION
from worker.destinations.base import credential_tag
from worker.destinations.yotpo import PATH
from worker.sandbox.server import MAX_BODY, Sandbox

from conftest import TOKEN, add_fault, sandbox_requests

PHONE = "+14155552671"
EMAIL = "jane.doe@example.com"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CUSTOM = "/v1/events/custom"
IDENTITY = "/v1/identity-resolution/user-identifiers"
ITEM = {"productId": "sku-1", "productVariantId": "sku-1-red", "price": [{"value": 19.99, "currency": "USD"}]}


@pytest.fixture
def api(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=5) as c:
        yield c


def event(type_: str = "Order Shipped", age: timedelta = timedelta(0)) -> dict[str, Any]:
    return {
        "type": type_,
        "user": {"phone": PHONE},
        "externalEventId": str(uuid.uuid4()),
        "occurredAt": (datetime.now(UTC) - age).isoformat(),
    }


def configure(sb: Sandbox, **config: Any) -> None:
    httpx.post(f"{sb.url}/__sandbox/config", json=config).raise_for_status()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}],
)
def test_401_without_or_with_wrong_token(sandbox: Sandbox, headers: dict[str, str]) -> None:
    response = httpx.post(f"{sandbox.url}{CUSTOM}", json=event(), headers=headers)
    assert response.status_code == 401
    assert httpx.get(f"{sandbox.url}/v1/me", headers=headers).status_code == 401
    assert [(r["path"], r["status"]) for r in sandbox_requests(sandbox)] == [(CUSTOM, 401)]


def test_recorded_bodies_are_served_only_with_the_token(sandbox: Sandbox, api: httpx.Client) -> None:
    api.post(CUSTOM, json=event())
    for headers in ({}, {"Authorization": "Bearer wrong-token"}):
        response = httpx.get(f"{sandbox.url}/__sandbox/requests", headers=headers)
        assert response.status_code == 401 and PHONE not in response.text
    assert httpx.get(f"{sandbox.url}/__sandbox/stats").json() == {f"{CUSTOM} 200": 1}, "counts stay open"
    assert sandbox_requests(sandbox)[0]["body"]["user"]["phone"] == PHONE


def test_valid_custom_event_accepted_and_recorded(sandbox: Sandbox, api: httpx.Client) -> None:
    body = event()
    response = api.post(CUSTOM, json=body)
    assert (response.status_code, response.content) == (200, b"")
    [seen] = sandbox_requests(sandbox)
    assert (seen["path"], seen["status"], seen["note"], seen["body"]) == (CUSTOM, 200, "accepted", body)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/events/ecommerce/product-view", {"user": {"email": EMAIL}, "items": [ITEM]}),
        ("/v1/events/ecommerce/add-to-cart", {"user": {"email": EMAIL}, "items": [{**ITEM, "quantity": 2}]}),
        ("/v1/events/ecommerce/purchase", {"user": {"email": EMAIL}, "items": [ITEM], "orderId": "o-1"}),
        ("/v1/attributes/custom", {"user": {"email": EMAIL}, "properties": {"tier": "gold"}}),
    ],
)
def test_other_endpoints_accept_valid_bodies(api: httpx.Client, path: str, body: dict[str, Any]) -> None:
    assert api.post(path, json=body).status_code == 200


def test_identity_answers_202(api: httpx.Client) -> None:
    assert api.post(IDENTITY, json={"clientUserId": "u-1", "phone": PHONE}).status_code == 202
    refused = api.post(IDENTITY, json={"clientUserId": "u-1"})
    assert refused.status_code == 400 and "at least one other identifier" in refused.json()["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**event(), "type": "Order|Shipped"}, "type"),
        ({"type": "Order Shipped"}, "user"),
        ({**event(), "user": {"phone": "999 888 77"}}, "user.phone"),
        ({**event(), "user": {"phone": PHONE, "x": 1}}, "user.x"),
    ],
)
def test_invalid_body_400_names_the_field(
    sandbox: Sandbox, api: httpx.Client, body: dict[str, Any], field: str
) -> None:
    response = api.post(CUSTOM, json=body)
    assert response.status_code == 400
    assert f"{field}:" in response.json()["message"]
    assert "999 888 77" not in response.text
    assert sandbox_requests(sandbox)[-1]["note"] == "invalid"


@pytest.mark.parametrize("content", [b"[1, 2]", b"not json", b""])
def test_non_object_body_400(api: httpx.Client, content: bytes) -> None:
    response = api.post(CUSTOM, content=content)
    assert response.status_code == 400 and "JSON object" in response.json()["message"]


def test_unknown_endpoint_404(api: httpx.Client) -> None:
    assert api.post("/v1/events/ecommerce/view-item", json=event()).status_code == 404
    assert api.get("/v1/nothing").status_code == 404


def test_rate_limit_429_with_headers(sandbox: Sandbox, api: httpx.Client) -> None:
    configure(sandbox, rate=5)
    # 11 requests span at most two one-second windows, so one window sees 6 or more.
    responses = [api.post(CUSTOM, json=event()) for _ in range(11)]
    statuses = [r.status_code for r in responses]
    assert 429 in statuses and set(statuses) <= {200, 429} and statuses.count(200) >= 5
    for r in responses:
        assert r.headers["x-ratelimit-limit"] == "5"
        assert 0 <= int(r.headers["x-ratelimit-remaining"]) <= 4
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert sandbox_requests(sandbox)[statuses.index(429)]["note"] == "rate limited"


def test_identity_endpoint_limited_at_10_per_second(api: httpx.Client) -> None:
    identities = [api.post(IDENTITY, json={"clientUserId": f"u-{i}", "phone": PHONE}) for i in range(21)]
    assert 429 in [r.status_code for r in identities]
    assert {r.headers["x-ratelimit-limit"] for r in identities} == {"10"}
    events = [api.post(CUSTOM, json=event()) for _ in range(21)]
    assert {r.status_code for r in events} == {200}
    assert {r.headers["x-ratelimit-limit"] for r in events} == {"150"}


def test_fault_status_and_times(sandbox: Sandbox, api: httpx.Client) -> None:
    add_fault(sandbox, status=503, times=2)
    assert [api.post(CUSTOM, json=event()).status_code for _ in range(3)] == [503, 503, 200]
    assert [r["note"] for r in sandbox_requests(sandbox)] == ["fault", "fault", "accepted"]


def test_fault_matches_type_and_path(api: httpx.Client, sandbox: Sandbox) -> None:
    add_fault(sandbox, status=500, type="Order Shipped")
    add_fault(sandbox, status=502, path="/v1/events/ecommerce/purchase")
    assert api.post(CUSTOM, json=event("Cart Abandoned")).status_code == 200
    assert api.post(CUSTOM, json=event("order shipped")).status_code == 200  # type match is exact
    assert api.post(CUSTOM, json=event("Order Shipped")).status_code == 500
    assert api.post(CUSTOM, json=event("Order Shipped")).status_code == 200
    purchase = {"user": {"email": EMAIL}, "items": [ITEM], "orderId": "o-1"}
    assert api.post("/v1/events/ecommerce/purchase", json=purchase).status_code == 502
    assert api.post("/v1/events/ecommerce/purchase", json=purchase).status_code == 200


def test_fault_retry_after_header(api: httpx.Client, sandbox: Sandbox) -> None:
    add_fault(sandbox, status=429, retry_after=3)
    limited = api.post(CUSTOM, json=event())
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "3")
    assert "retry-after" not in api.post(CUSTOM, json=event()).headers


def test_reset_forgets_requests_and_faults(api: httpx.Client, sandbox: Sandbox) -> None:
    add_fault(sandbox, status=500, times=5)
    assert api.post(CUSTOM, json=event()).status_code == 500
    httpx.post(f"{sandbox.url}/__sandbox/reset").raise_for_status()
    assert sandbox_requests(sandbox) == []
    assert api.post(CUSTOM, json=event()).status_code == 200


def test_stale_event_answered_200_and_dropped(sandbox: Sandbox, api: httpx.Client) -> None:
    assert api.post(CUSTOM, json=event(age=timedelta(hours=13))).status_code == 200
    assert api.post(CUSTOM, json=event(age=timedelta(hours=11))).status_code == 200
    assert [r["note"] for r in sandbox_requests(sandbox)] == ["dropped_stale", "accepted"]


def test_me(api: httpx.Client) -> None:
    response = api.get("/v1/me")
    assert response.status_code == 200
    assert set(response.json()) == {"applicationName", "companyName"}


def test_attributes_round_trip(api: httpx.Client) -> None:
    assert api.get("/v1/attributes/custom", params={"phone": PHONE}).json() == []
    user = {"phone": PHONE, "email": EMAIL}
    assert api.post("/v1/attributes/custom", json={"user": user, "properties": {"tier": "gold", "pts": 3}}).is_success
    assert api.post("/v1/attributes/custom", json={"user": user, "properties": {"tier": "platinum"}}).is_success
    by_phone = api.get(f"/v1/attributes/custom?phone={PHONE.replace('+', '%2B')}")
    assert by_phone.status_code == 200
    assert {a["name"]: a["value"] for a in by_phone.json()} == {"tier": "platinum", "pts": 3}
    assert api.get("/v1/attributes/custom", params={"email": EMAIL}).json() == by_phone.json()
    assert api.get("/v1/attributes/custom", params={"phone": "+14155550100"}).json() == []
    assert api.get("/v1/attributes/custom", params={"phone": PHONE, "email": EMAIL}).status_code == 400
    assert api.get("/v1/attributes/custom").status_code == 400


def test_oversized_body_413(sandbox: Sandbox) -> None:
    host, port = sandbox.server.server_address[:2]
    assert isinstance(host, str)  # an IPv4 server
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.putrequest("POST", CUSTOM)
        conn.putheader("Authorization", f"Bearer {TOKEN}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(MAX_BODY + 1))
        conn.endheaders()  # the sandbox must refuse on the declared length, before reading any body
        response = conn.getresponse()
        assert response.status == 413
        assert b"too large" in response.read()
    finally:
        conn.close()
    assert sandbox_requests(sandbox) == []


def test_each_request_records_a_tag_of_its_credential_never_the_credential(sandbox: Sandbox) -> None:
    httpx.post(f"{sandbox.url}{CUSTOM}", json=event(), headers=AUTH)
    httpx.post(f"{sandbox.url}{CUSTOM}", json=event(), headers={"Authorization": "Bearer wrong-token"})
    httpx.post(f"{sandbox.url}{CUSTOM}", json=event())
    recorded = sandbox_requests(sandbox)
    assert [r["token_tag"] for r in recorded] == [credential_tag(TOKEN), credential_tag("wrong-token"), None]
    assert [r["status"] for r in recorded] == [200, 401, 401]
    assert TOKEN not in str(recorded) and "wrong-token" not in str(recorded)


def test_graphql_and_yotpo_are_played_by_the_same_server(sandbox: Sandbox, api: httpx.Client) -> None:
    add_fault(sandbox, graphql_code="THROTTLED", path="/v1/graphql")
    variables = {"input": {"type": "Order Shipped", "user": {"phone": PHONE}}}
    throttled = api.post("/v1/graphql", json={"query": MUTATION, "variables": variables})
    assert (throttled.status_code, throttled.json()["errors"][0]["extensions"]["code"]) == (200, "THROTTLED")
    assert api.post("/v1/graphql", json={"query": MUTATION, "variables": variables}).json()["data"]
    yotpo = {
        "source": "shop",
        "type": "order_shipped",
        "occurred_at": datetime.now(UTC).isoformat(),
        "event_id": str(uuid.uuid4()),
        "customer": {"email": EMAIL},
    }
    assert httpx.post(
        f"{sandbox.url}{PATH.format(store_id='s-1')}", json=yotpo, headers={"X-Yotpo-Token": "t"}
    ).is_success
    assert httpx.get(f"{sandbox.url}/__sandbox/stats").json() == {
        "/v1/graphql 200": 2,
        "/core/v3/stores/s-1/custom_events 200": 1,
    }
