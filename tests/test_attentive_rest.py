"""The Attentive REST destination against httpx.MockTransport: requests it sends, outcomes it returns."""

from __future__ import annotations

import email.utils
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from producers.accounts import DEFAULT, Account
from producers.errors import NetworkError, RateLimited, Rejected, ServerError, Unauthorized
from producers.job.models import EVENT_PATHS, attentive_body
from producers.job.validation import parse_job
from producers.settings import Settings
from worker.destinations import Outcome
from worker.destinations.attentive_rest import AttentiveRest

TOKEN = "tok-live-9f8e7d6c5b4a"
NOW = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
USER = {"phone": "+14155552671", "email": "jane.doe@example.com"}
ITEM = {"productId": "sku-1", "productVariantId": "sku-1-red", "price": [{"value": 19.99, "currency": "USD"}]}
JOBS: dict[str, dict[str, Any]] = {
    "custom_event": {
        "type": "Order Shipped",
        "user": USER,
        "properties": {"orderId": "o-1"},
        "externalEventId": "e-1",
        "occurredAt": "2026-01-31T11:00:00Z",
    },
    "custom_attributes": {"user": USER, "properties": {"tier": "gold"}},
    "product_view": {"user": USER, "items": [ITEM], "occurredAt": "2026-01-31T11:00:00Z"},
    "add_to_cart": {"user": USER, "items": [{**ITEM, "quantity": 2}], "occurredAt": "2026-01-31T11:00:00Z"},
    "purchase": {"user": USER, "items": [ITEM], "orderId": "o-1", "occurredAt": "2026-01-31T11:00:00Z"},
    "identity": {"clientUserId": "u-1", "phone": "+14155552671"},
}


def recording(seen: list[httpx.Request]) -> Callable[[httpx.Request], httpx.Response]:
    """A MockTransport handler that keeps each request in ``seen`` and answers 200."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    return handle


def job(kind: str = "custom_event") -> Any:
    return parse_job({"kind": kind, **JOBS[kind]}, Settings(), NOW, at_enqueue=False)


class Client:
    """The destination with one account's credentials, as a worker uses it."""

    def __init__(self, destination: AttentiveRest, account: Account) -> None:
        self.destination = destination
        self.account = account

    def deliver(self, job: Any) -> Outcome:
        return self.destination.deliver(job, self.account)


def client(handler: Callable[[httpx.Request], httpx.Response], token: str | None = TOKEN, **kw: Any) -> Client:
    settings = Settings(attentive_api_token=token, attentive_base_url="https://api.attentive.test/", **kw)
    return Client(AttentiveRest(settings, transport=httpx.MockTransport(handler)), settings.accounts[DEFAULT])


def answer(status: int, text: str = "", **headers: str) -> Outcome:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text=text, headers=headers)

    return client(handler).deliver(job())


def raising(exc: type[Exception]) -> Outcome:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc(f"failed with {request.headers['authorization']}", request=request)  # type: ignore[call-arg]

    return client(handler).deliver(job())


def test_every_kind_is_covered() -> None:
    assert set(JOBS) == set(EVENT_PATHS)


@pytest.mark.parametrize("kind", list(JOBS))
def test_request_path_headers_and_body(kind: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202 if kind == "identity" else 200)

    the_job = job(kind)
    outcome = client(handler).deliver(the_job)
    assert outcome.error is None and outcome.status == (202 if kind == "identity" else 200)
    [request] = seen
    assert request.method == "POST"
    assert str(request.url) == f"https://api.attentive.test{EVENT_PATHS[kind]}"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert "attentive-relay" in request.headers["user-agent"]
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == attentive_body(the_job)
    assert "kind" not in json.loads(request.content)


def test_decimal_price_sent_as_is() -> None:
    seen: list[httpx.Request] = []
    client(recording(seen)).deliver(job("purchase"))
    assert b'"value":19.99' in seen[0].content


def test_success_has_no_error() -> None:
    outcome = answer(200)
    assert (outcome.status, outcome.error) == (200, None)
    assert outcome.elapsed_s >= 0


def test_429_with_retry_after_seconds() -> None:
    outcome = answer(429, "slow down", **{"Retry-After": "7"})
    assert isinstance(outcome.error, RateLimited)
    assert (outcome.status, outcome.error.status, outcome.error.retry_after) == (429, 429, 7.0)
    assert outcome.error.reason == "rate_limited" and outcome.error.body == "slow down"


def test_429_with_retry_after_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    outcome = answer(429, **{"Retry-After": email.utils.format_datetime(when, usegmt=True)})
    assert isinstance(outcome.error, RateLimited)
    assert 100 < outcome.error.retry_after <= 120  # type: ignore[operator]
    past = answer(429, **{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert past.error.retry_after == 0.0  # type: ignore[union-attr]


@pytest.mark.parametrize("header", [None, "soon", ""])
def test_429_without_usable_retry_after(header: str | None) -> None:
    outcome = answer(429, **({} if header is None else {"Retry-After": header}))
    assert isinstance(outcome.error, RateLimited) and outcome.error.retry_after is None


@pytest.mark.parametrize("status", [401, 403])
def test_unauthorized(status: int) -> None:
    outcome = answer(status, '{"error": "Unauthorized"}')
    assert isinstance(outcome.error, Unauthorized)
    assert outcome.error.status == status and not outcome.error.retryable
    assert outcome.error.body == '{"error": "Unauthorized"}'


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors(status: int) -> None:
    outcome = answer(status, "oops")
    assert isinstance(outcome.error, ServerError)
    assert (outcome.error.status, outcome.error.body, outcome.error.retryable) == (status, "oops", True)


@pytest.mark.parametrize("status", [400, 404, 409, 413, 422])
def test_rejected_keeps_the_body(status: int) -> None:
    text = json.dumps({"status": status, "message": "clientUserId or customIdentifiers must be set"})
    outcome = answer(status, text)
    assert isinstance(outcome.error, Rejected)
    assert (outcome.error.status, outcome.error.body, outcome.error.reason) == (status, text, "rejected")


def test_rejected_body_truncated_to_2000_chars() -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(5000))
    outcome = answer(400, text)
    assert outcome.error is not None and outcome.error.body == text[:2000]


@pytest.mark.parametrize("exc", [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.WriteTimeout, httpx.PoolTimeout])
def test_timeouts_are_network_errors(exc: type[Exception]) -> None:
    outcome = raising(exc)
    assert isinstance(outcome.error, NetworkError) and outcome.status is None
    assert "timeout" in str(outcome.error) and outcome.error.retryable


@pytest.mark.parametrize("exc", [httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError])
def test_connection_failures_are_network_errors(exc: type[Exception]) -> None:
    outcome = raising(exc)
    assert isinstance(outcome.error, NetworkError) and outcome.status is None
    assert exc.__name__ in str(outcome.error)


@pytest.mark.parametrize(
    ("headers", "limit", "remaining"),
    [
        ({"x-ratelimit-limit": "150", "x-ratelimit-remaining": "149"}, 150, 149),
        ({}, None, None),
        ({"x-ratelimit-limit": "lots", "x-ratelimit-remaining": "0"}, None, 0),
    ],
)
def test_ratelimit_headers_parsed(headers: dict[str, str], limit: int | None, remaining: int | None) -> None:
    for status in (200, 429):
        outcome = answer(status, **headers)
        assert (outcome.ratelimit_limit, outcome.ratelimit_remaining) == (limit, remaining)


@pytest.mark.parametrize("token", [None, ""])
def test_no_token_means_unauthorized_without_a_request(token: str | None) -> None:
    calls: list[httpx.Request] = []
    outcome = client(recording(calls), token=token).deliver(job())
    assert isinstance(outcome.error, Unauthorized) and outcome.status is None
    assert calls == []


def test_token_never_in_error_text() -> None:
    echo = f'{{"message": "bad token {TOKEN}"}}'
    outcomes = [answer(s, echo) for s in (400, 401, 403, 404, 413, 422, 429, 500, 503)]
    outcomes += [raising(e) for e in (httpx.ReadTimeout, httpx.ConnectError, httpx.ReadError)]
    for outcome in outcomes:
        assert outcome.error is not None
        assert TOKEN not in str(outcome.error) and TOKEN not in repr(outcome.error)
        assert TOKEN not in outcome.error.detail


def test_each_account_s_calls_carry_that_account_s_token() -> None:
    settings = Settings(
        attentive_api_token=TOKEN,
        attentive_base_url="https://api.attentive.test/",
        attentive_accounts='{"brand-a": {"token": "tok-brand-a"}, "brand-b": {"token": "tok-brand-b"}}',
    )
    seen: list[httpx.Request] = []
    destination = AttentiveRest(settings, transport=httpx.MockTransport(recording(seen)))
    for name in ("brand-a", DEFAULT, "brand-b", "brand-a"):
        assert destination.deliver(job(), settings.accounts[name]).error is None
    sent = [r.headers["authorization"] for r in seen]
    assert sent == ["Bearer tok-brand-a", f"Bearer {TOKEN}", "Bearer tok-brand-b", "Bearer tok-brand-a"]


def test_an_account_without_a_token_is_unauthorized_naming_where_to_set_it() -> None:
    settings = Settings(attentive_accounts='{"brand-a": {}}')
    calls: list[httpx.Request] = []
    destination = AttentiveRest(settings, transport=httpx.MockTransport(recording(calls)))
    outcome = destination.deliver(job(), settings.accounts["brand-a"])
    assert isinstance(outcome.error, Unauthorized)
    assert str(outcome.error) == "ATTENTIVE_ACCOUNTS brand-a.token is not set"
    assert calls == []


def test_each_account_and_endpoint_has_its_own_rate_bucket() -> None:
    settings = Settings(
        attentive_api_token=TOKEN,
        attentive_accounts='{"brand-a": {"token": "tok-brand-a", "rate_limit": 300}}',
    )
    rest = AttentiveRest(settings)
    default, brand_a = settings.accounts[DEFAULT], settings.accounts["brand-a"]
    buckets = {
        (name, kind): rest.bucket(job(kind), settings.accounts[name])
        for name in (DEFAULT, "brand-a")
        for kind in ("custom_event", "identity")
    }
    assert len({(b.tag, b.lane) for b in buckets.values()}) == 4
    assert buckets[(DEFAULT, "custom_event")].rate == 150
    assert buckets[("brand-a", "custom_event")].rate == 300
    assert buckets[("brand-a", "identity")].rate == 10, "Attentive's published identity limit still holds"
    assert "tok" not in buckets[("brand-a", "identity")].tag and default != brand_a
