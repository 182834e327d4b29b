"""Attentive GraphQL for custom events: the request (MockTransport), the classification of
GraphQL answers, and whole deliveries against the sandbox's GraphQL stand-in."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from test_delivery import dead_entry, run_until_done

from producers.accounts import DEFAULT
from producers.errors import RateLimited, Rejected, ServerError, Unauthorized
from producers.job.validation import parse_job
from producers.producer import Producer
from producers.settings import Settings
from producers.store.message import ticket_for
from worker.counters import stats
from worker.delivery import Delivery
from worker.destinations import Destinations
from worker.destinations.attentive_graphql import MUTATION, AttentiveGraphQL, classify, error_class
from worker.destinations.base import MAX_BODY_KEPT, credential_tag

from conftest import TOKEN, add_fault, delivery_for, make_settings, sandbox_requests

NOW = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
EVENT = {
    "kind": "custom_event",
    "type": "Order Shipped",
    "user": {
        "phone": "(415) 555-2671",
        "email": "jane.doe@example.com",
        "externalIdentifiers": {"clientUserId": "u-1", "customIdentifiers": [{"name": "crm", "value": "c-9"}]},
    },
    "properties": {"carrier": "UPS", "items": 2, "gift": True, "dims": {"kg": 1.5}},
    "externalEventId": "e-1",
    "occurredAt": "2026-01-31T11:00:00+01:00",
}


def graphql_settings(**kw: Any) -> Settings:
    return Settings(
        attentive_api_token=TOKEN,
        attentive_base_url="https://api.attentive.test",
        attentive_custom_events_api="graphql",
        **kw,
    )


def test_the_request_is_the_constant_mutation_with_the_input_in_variables() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"data": {"createCustomEvent": {"__typename": "CreateCustomEventPayload"}}})

    settings = graphql_settings()
    job = parse_job(EVENT, settings, NOW, at_enqueue=False)
    outcome = AttentiveGraphQL(settings, httpx.MockTransport(handler)).deliver(job, settings.accounts[DEFAULT])
    assert outcome.error is None and outcome.status == 200
    [request] = seen
    assert str(request.url) == "https://api.attentive.test/v1/graphql"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    body = json.loads(request.content)
    assert body == {
        "query": MUTATION,
        "variables": {
            "input": {
                "type": "Order Shipped",
                "user": {
                    "phone": "+14155552671",
                    "email": "jane.doe@example.com",
                    "externalIdentifiers": {
                        "clientUserId": "u-1",
                        "customIdentifiers": [{"name": "crm", "value": "c-9"}],
                    },
                },
                "properties": '{"carrier":"UPS","items":2,"gift":true,"dims":{"kg":1.5}}',
                "externalEventId": "e-1",
                "occurredAt": "2026-01-31T10:00:00Z",
            }
        },
    }
    assert "Order Shipped" not in body["query"] and "$input" in body["query"]


def test_an_event_without_properties_sends_none() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"data": {"createCustomEvent": {"__typename": "X"}}})

    settings = graphql_settings()
    job = parse_job({**EVENT, "properties": None}, settings, NOW, at_enqueue=False)
    AttentiveGraphQL(settings, httpx.MockTransport(handler)).deliver(job, settings.accounts[DEFAULT])
    assert "properties" not in seen[0]["variables"]["input"]


def errors(*codes: Any, message: str = "went wrong") -> str:
    return json.dumps(
        {
            "data": None,
            "errors": [{"message": message, "extensions": {"code": c} if c is not None else {}} for c in codes],
        }
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (errors("BAD_USER_INPUT"), Rejected),
        (errors("GRAPHQL_VALIDATION_FAILED"), Rejected),
        (errors("INVALID_ARGUMENT"), Rejected),
        (errors("UNAUTHENTICATED"), Unauthorized),
        (errors("FORBIDDEN"), Unauthorized),
        (errors(401), Unauthorized),
        (errors("403"), Unauthorized),
        (errors("RATE_LIMITED"), RateLimited),
        (errors("THROTTLED"), RateLimited),
        (errors("TOO_MANY_REQUESTS"), RateLimited),
        (errors(429), RateLimited),
        (errors("INTERNAL_SERVER_ERROR"), ServerError),
        (errors(503), ServerError),
        (errors("SOMETHING_NEW"), Rejected),
        (errors(None, message="Too many requests, slow down"), RateLimited),
        (errors(None, message="no idea"), Rejected),
        (errors("INTERNAL_SERVER_ERROR", "BAD_USER_INPUT"), Rejected),
        (errors("RATE_LIMITED", "UNAUTHENTICATED"), Unauthorized),
        (errors("INTERNAL_SERVER_ERROR", "RATE_LIMITED"), RateLimited),
        ("<html>gateway</html>", ServerError),
        ("{}", ServerError),
    ],
)
def test_errors_inside_a_200_are_classified_by_code(body: str, expected: type) -> None:
    error = classify(200, body, httpx.Headers())
    assert type(error) is expected
    assert error is not None and error.status == 200


def test_success_and_http_statuses() -> None:
    assert classify(200, json.dumps({"data": {"createCustomEvent": {"__typename": "X"}}}), httpx.Headers()) is None
    assert isinstance(classify(401, "", httpx.Headers()), Unauthorized)
    assert isinstance(classify(502, "", httpx.Headers()), ServerError)
    limited = classify(429, "", httpx.Headers({"retry-after": "3"}))
    assert isinstance(limited, RateLimited) and limited.retry_after == 3.0
    assert isinstance(classify(400, "", httpx.Headers()), Rejected)


@pytest.mark.parametrize(
    "body",
    [
        '{"data": null}',
        '{"errors": []}',
        '{"data": null, "errors": []}',
        '{"data": null, "errors": null}',
        '{"data": {}}',
        '{"data": {"createCustomEvent": null}}',
        '{"data": {"createCustomEvent": null}, "errors": []}',
        '{"data": {"createCustomEvent": true}}',
        '{"data": [], "errors": {}}',
    ],
)
def test_a_200_without_the_mutations_result_or_errors_is_a_server_error_keeping_the_body(body: str) -> None:
    # the event may not exist at Attentive and nothing says why: retried like a 5xx
    # (externalEventId makes a retry of a created event harmless), never counted delivered
    error = classify(200, body, httpx.Headers())
    assert type(error) is ServerError
    assert error.status == 200 and error.body == body
    assert "createCustomEvent" in error.detail


def test_only_a_returned_create_custom_event_is_delivered() -> None:
    payloads: list[dict[str, Any]] = [{"createCustomEvent": {"__typename": "X"}}, {"createCustomEvent": {}}]
    for payload in payloads:
        assert classify(200, json.dumps({"data": payload}), httpx.Headers()) is None
        assert classify(200, json.dumps({"data": payload, "errors": []}), httpx.Headers()) is None


def test_a_200_with_null_data_is_retried_then_dead_lettered_with_its_body(redis_server, redis_client) -> None:
    answers = iter([{"data": None}, {"errors": []}] + [{"data": {"createCustomEvent": None}}] * 2)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=next(answers))

    settings = make_settings(redis_server.url, attentive_custom_events_api="graphql")
    store = delivery_for(settings, redis_client).store
    delivery = Delivery(settings, Destinations(settings, httpx.MockTransport(handler)), store, rand=lambda: 0.5)
    job_id = Producer(settings, redis_client).enqueue(SIMPLE)
    outcomes = run_until_done(delivery, redis_client, job_id)
    assert outcomes[-1] == "dead:server_error" and len(outcomes) == settings.attentive_max_attempts
    entry = dead_entry(redis_client, job_id)
    assert entry["status"] == 200 and json.loads(entry["response"]) == {"data": {"createCustomEvent": None}}


# Error items as GraphQL servers send them. Shopify Admin: THROTTLED. GitHub: no extensions,
# the class in "type" and a message. Lighthouse's @throttle: a category, no code. Apollo
# Router: REQUEST_RATE_LIMITED, GATEWAY_TIMEOUT. gRPC-backed servers: the gRPC status names
# (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED). AniList: the HTTP status at the top, no extensions.
SHOPIFY_THROTTLED = {
    "message": "Throttled",
    "extensions": {"code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"},
}
GITHUB_RATE_LIMIT = {
    "type": "RATE_LIMIT",
    "code": "graphql_rate_limit",
    "message": "API rate limit already exceeded for user ID 1234567.",
}
LIGHTHOUSE_THROTTLE = {
    "message": "Rate limit for Mutation.createCustomEvent exceeded. Try again later.",
    "extensions": {"category": "rate-limit"},
}
APOLLO_RATE_LIMITED = {"message": "Your request has been rate limited", "extensions": {"code": "REQUEST_RATE_LIMITED"}}
APOLLO_TIMEOUT = {"message": "Request timed out", "extensions": {"code": "GATEWAY_TIMEOUT"}}
GRPC_EXHAUSTED = {"message": "Quota exceeded for quota metric 'Events'", "extensions": {"code": "RESOURCE_EXHAUSTED"}}
GRPC_DEADLINE = {"message": "Deadline exceeded", "extensions": {"code": "DEADLINE_EXCEEDED"}}
ANILIST_TOO_MANY = {"message": "Too Many Requests.", "status": 429, "locations": [{"line": 1, "column": 1}]}


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(SHOPIFY_THROTTLED, "rate", id="shopify THROTTLED"),
        pytest.param(GITHUB_RATE_LIMIT, "rate", id="github RATE_LIMIT type"),
        pytest.param(LIGHTHOUSE_THROTTLE, "rate", id="lighthouse category"),
        pytest.param(APOLLO_RATE_LIMITED, "rate", id="apollo REQUEST_RATE_LIMITED"),
        pytest.param(GRPC_EXHAUSTED, "rate", id="grpc RESOURCE_EXHAUSTED"),
        pytest.param(ANILIST_TOO_MANY, "rate", id="anilist status 429"),
        pytest.param(
            {"message": "Rate limit exceeded", "extensions": {"code": "LIMIT_EXCEEDED"}},
            "rate",
            id="unknown code, rate limit message",
        ),
        pytest.param(
            {"message": "Too many requests, slow down", "extensions": {"code": "E_LIMIT"}},
            "rate",
            id="unknown code, too many requests",
        ),
        pytest.param(
            {"message": "Request throttled", "extensions": {"code": "REJECTED_BY_GATEWAY"}},
            "rate",
            id="unknown code, throttled message",
        ),
        pytest.param(
            {"message": "upstream", "extensions": {"code": "ThrottlingException"}}, "rate", id="ThrottlingException"
        ),
        pytest.param({"message": "over quota", "extensions": {"code": "QUOTA_EXCEEDED"}}, "rate", id="QUOTA_EXCEEDED"),
        pytest.param(APOLLO_TIMEOUT, "server", id="apollo GATEWAY_TIMEOUT"),
        pytest.param(GRPC_DEADLINE, "server", id="grpc DEADLINE_EXCEEDED"),
        pytest.param({"message": "Timeout exceeded", "extensions": {"code": "TIMEOUT"}}, "server", id="TIMEOUT"),
        pytest.param(
            {"message": "The operation timed out", "extensions": {"code": "E_UPSTREAM"}},
            "server",
            id="unknown code, timed out message",
        ),
        pytest.param({"message": "bad gateway", "extensions": {"code": "BAD_GATEWAY"}}, "server", id="BAD_GATEWAY"),
        # a known code wins over words in the message: a validation error stays one
        pytest.param(
            {"message": "timeout must be a number", "extensions": {"code": "BAD_USER_INPUT"}},
            "invalid",
            id="validation mentioning timeout",
        ),
        pytest.param(
            {"message": "rate limit field is invalid", "extensions": {"code": "VALIDATION_ERROR"}},
            "invalid",
            id="validation mentioning rate limit",
        ),
        pytest.param({"message": "went wrong", "extensions": {"code": "SOMETHING_NEW"}}, "unknown", id="unknown"),
        pytest.param(
            {"message": "a timeline outage", "extensions": {"code": "SOMETHING_NEW"}},
            "unknown",
            id="unknown, timeline outage",
        ),
    ],
)
def test_error_class_of_real_error_items(error: dict[str, Any], expected: str) -> None:
    assert error_class(error) == expected


def test_a_throttling_error_with_an_unknown_code_is_rate_limited_and_a_timeout_a_server_error() -> None:
    limited = classify(200, json.dumps({"data": None, "errors": [GRPC_EXHAUSTED]}), httpx.Headers({"retry-after": "2"}))
    assert isinstance(limited, RateLimited) and limited.retry_after == 2.0
    assert "RESOURCE_EXHAUSTED" in limited.detail and "Quota" not in limited.detail
    timed_out = classify(200, json.dumps({"data": None, "errors": [APOLLO_TIMEOUT]}), httpx.Headers())
    assert isinstance(timed_out, ServerError) and "GATEWAY_TIMEOUT" in timed_out.detail


def test_the_error_keeps_codes_and_messages_truncated_and_the_detail_names_codes_only() -> None:
    error = classify(200, errors("BAD_USER_INPUT", message="user.phone +14155552671 is bad " * 200), httpx.Headers())
    assert error is not None and len(error.body) == MAX_BODY_KEPT
    assert error.body.startswith('[{"code": "BAD_USER_INPUT", "message": "user.phone')
    assert "BAD_USER_INPUT" in error.detail and "+1415" not in error.detail
    limited = classify(200, errors("RATE_LIMITED"), httpx.Headers({"retry-after": "2"}))
    assert isinstance(limited, RateLimited) and limited.retry_after == 2.0


def test_destinations_pick_graphql_for_custom_events_only() -> None:
    settings = graphql_settings()
    destinations = Destinations(settings)
    custom = parse_job(EVENT, settings, NOW, at_enqueue=False)
    identity = parse_job(
        {"kind": "identity", "clientUserId": "u-1", "phone": "+14155552671"}, settings, NOW, at_enqueue=False
    )
    assert destinations.for_job(custom) is destinations.attentive_graphql
    assert destinations.for_job(identity) is destinations.attentive_rest
    assert Destinations(Settings(attentive_api_token=TOKEN)).for_job(custom).name == "attentive_rest"
    bucket = destinations.attentive_graphql.bucket(custom, settings.accounts[DEFAULT])
    assert (bucket.tag, bucket.lane, bucket.rate) == (credential_tag(TOKEN), "graphql", 150.0)
    tuned = graphql_settings(attentive_rate_limits={"graphql": 40})
    assert Destinations(tuned).attentive_graphql.bucket(custom, tuned.accounts[DEFAULT]).rate == 40.0
    destinations.close()


# ---------------------------------------------------------------- against the sandbox

SIMPLE = {"kind": "custom_event", "type": "Order Shipped", "user": {"phone": "+14155552671"}}


@pytest.fixture
def gql(redis_server, redis_client, sandbox) -> Settings:
    return make_settings(redis_server.url, sandbox.url, attentive_custom_events_api="graphql")


def test_a_custom_event_is_delivered_through_the_mutation(gql, redis_client, sandbox) -> None:
    job_id = Producer(gql, redis_client).enqueue({**SIMPLE, "properties": {"price": 19.99, "sku": "a-1"}})
    assert run_until_done(delivery_for(gql, redis_client), redis_client, job_id) == ["delivered"]
    [request] = sandbox_requests(sandbox)
    assert (request["path"], request["status"], request["note"]) == ("/v1/graphql", 200, "accepted")
    assert request["token_tag"] == credential_tag(TOKEN)
    event = request["body"]["variables"]["input"]
    assert request["body"]["query"] == MUTATION
    assert json.loads(event["properties"]) == {"price": 19.99, "sku": "a-1"}
    assert event["user"] == {"phone": "+14155552671"} and event["externalEventId"]


@pytest.mark.parametrize(
    ("code", "reason", "attempts"),
    [
        ("BAD_USER_INPUT", "rejected", 1),
        ("GRAPHQL_VALIDATION_FAILED", "rejected", 1),
        ("SOMETHING_NEW", "rejected", 1),
        ("RATE_LIMITED", "rate_limited", 4),
        ("RESOURCE_EXHAUSTED", "rate_limited", 4),
        ("INTERNAL_SERVER_ERROR", "server_error", 4),
        ("TIMEOUT", "server_error", 4),
    ],
)
def test_each_graphql_error_dead_letters_with_its_reason_and_text(
    gql, redis_client, sandbox, code, reason, attempts
) -> None:
    add_fault(sandbox, graphql_code=code, message=f"the sandbox says {code.lower()}", times=10)
    job_id = Producer(gql, redis_client).enqueue(SIMPLE)
    outcomes = run_until_done(delivery_for(gql, redis_client), redis_client, job_id)
    assert outcomes[-1] == f"dead:{reason}" and len(outcomes) == attempts
    entry = dead_entry(redis_client, job_id)
    assert entry["reason"] == reason and entry["status"] == 200
    assert json.loads(entry["response"]) == [{"code": code, "message": f"the sandbox says {code.lower()}"}]
    assert code in entry["detail"] and "sandbox says" not in entry["detail"]


def test_a_transient_graphql_error_is_retried_then_delivered(gql, redis_client, sandbox) -> None:
    add_fault(sandbox, graphql_code="INTERNAL_SERVER_ERROR", times=2)
    job_id = Producer(gql, redis_client).enqueue(SIMPLE)
    outcomes = run_until_done(delivery_for(gql, redis_client), redis_client, job_id)
    assert outcomes[-1] == "delivered" and len(outcomes) == 3
    assert len({r["body"]["variables"]["input"]["externalEventId"] for r in sandbox_requests(sandbox)}) == 1


@pytest.mark.parametrize("code", ["UNAUTHENTICATED", "FORBIDDEN"])
def test_a_refused_token_pauses_the_account_at_graphql(gql, redis_client, sandbox, code) -> None:
    add_fault(sandbox, graphql_code=code, times=10)
    job_id = Producer(gql, redis_client).enqueue(SIMPLE)
    assert delivery_for(gql, redis_client).run(job_id, ticket_for(job_id, 0)) == "held:unauthorized"
    assert list(stats(redis_client, gql)["paused"]) == ["default|attentive_graphql"]


def test_a_wrong_token_is_unauthenticated(redis_server, redis_client, sandbox) -> None:
    settings = make_settings(
        redis_server.url, sandbox.url, attentive_custom_events_api="graphql", attentive_api_token="wrong"
    )
    job_id = Producer(settings, redis_client).enqueue(SIMPLE)
    assert delivery_for(settings, redis_client).run(job_id, ticket_for(job_id, 0)) == "held:unauthorized"
    assert stats(redis_client, settings)["paused"]["default|attentive_graphql"]["status"] == 200
    assert sandbox_requests(sandbox)[0]["token_tag"] == credential_tag("wrong")


def test_the_sandbox_validates_the_variables_as_the_relay_does(sandbox) -> None:
    def send(event: dict[str, Any], query: str = MUTATION) -> dict[str, Any]:
        body = {"query": query, "variables": {"input": event}}
        response = httpx.post(f"{sandbox.url}/v1/graphql", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200
        return response.json()

    ok = {"type": "Order Shipped", "user": {"phone": "+14155552671"}, "properties": '{"a": 1}'}
    assert send(ok) == {"data": {"createCustomEvent": {"__typename": "CreateCustomEventPayload"}}}
    bad_phone = send({**ok, "user": {"phone": "999 888 77"}})
    assert bad_phone["data"] is None
    assert [(e["extensions"]["code"], e["extensions"]["field"]) for e in bad_phone["errors"]] == [
        ("BAD_USER_INPUT", "user.phone")
    ]
    assert "999 888 77" not in json.dumps(bad_phone)
    not_a_string = send({**ok, "properties": {"a": 1}})
    assert not_a_string["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "properties"}
    bad_key = send({**ok, "properties": '{"a|b": 1}'})
    assert bad_key["errors"][0]["extensions"]["field"] == "properties"
    wrong_document = send(ok, query="query { me { id } }")
    assert wrong_document["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    anonymous = httpx.post(f"{sandbox.url}/v1/graphql", json={"query": MUTATION, "variables": {"input": ok}})
    assert anonymous.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
