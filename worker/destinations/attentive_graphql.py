"""Attentive's GraphQL API (beta) for ``custom_event`` jobs, when ATTENTIVE_CUSTOM_EVENTS_API=graphql.

Where: ``POST {ATTENTIVE_BASE_URL}/v1/graphql`` with the account's Bearer token, the body
``{"query": MUTATION, "variables": {"input": {...}}}``. `MUTATION` is a constant: values only
ever travel in ``variables``, never in the document. The input is the job's Attentive body
(`producers.jobs.attentive_body`: ``type``, ``user``, ``externalEventId``, ``occurredAt``) with
``properties`` JSON-encoded as a STRING, as ``CreateCustomEventInput`` wants. The job format is
the same as for REST.

Selection set: ``__typename`` alone. The payload type of ``createCustomEvent`` is not in
the published material, and ``__typename`` is valid on every object type, so the document
cannot fail validation over a field name we guessed; the relay needs nothing back but
success or errors.

Outcomes. An HTTP status other than 2xx is classified as for REST (`attentive_rest.classify`).
A 2xx may still carry ``errors`` (``{"data": null, "errors": [{"message", "extensions":
{"code"}}]}``); each error's ``extensions.code`` (or a numeric ``extensions.status``) is
sorted into one class, and the job's outcome is the first class present in this order:

    Unauthorized   UNAUTHENTICATED, UNAUTHORIZED, FORBIDDEN, PERMISSION_DENIED, 401, 403
    Rejected       BAD_USER_INPUT, GRAPHQL_VALIDATION_FAILED, GRAPHQL_PARSE_FAILED,
                   INVALID_ARGUMENT, VALIDATION_ERROR, BAD_REQUEST, NOT_FOUND, other 4xx
    RateLimited    RATE_LIMITED, THROTTLED, TOO_MANY_REQUESTS, RATE_LIMIT_EXCEEDED, 429
    ServerError    INTERNAL_SERVER_ERROR, INTERNAL_ERROR, SERVICE_UNAVAILABLE, UNAVAILABLE,
                   DEADLINE_EXCEEDED, 5xx
    Rejected       anything else (unknown code, or none)

Auth first: nothing else can succeed without it. A known validation error next: the same
document and variables will fail the same way, so waiting is pointless even if another error
was transient. An unknown or missing code is Rejected rather than retried: the relay cannot
know it heals, retrying resends an identical request up to ATTENTIVE_MAX_ATTEMPTS times, and
the dead letter keeps the text for a replay once understood. A code missing, the message is
consulted for "unauthenticated"/"forbidden", "rate limit"/"too many requests" and "internal".
A 2xx whose body is neither ``data`` nor ``errors`` is a ServerError (retried: Attentive
deduplicates by ``externalEventId``). The error's ``body`` keeps each error's code and message
(up to `base.MAX_BODY_KEPT` characters) for the dead letter; its detail names codes only.

Rate limits: lane ``graphql`` per token, at ATTENTIVE_RATE_LIMITS["graphql"], else the
account's ``rate_limit``, else ATTENTIVE_RATE_LIMIT (`attentive_rest.rate_for`).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import httpx
from pydantic import BaseModel

from producers.accounts import Account
from producers.errors import DeliveryError, RateLimited, Rejected, ServerError, Unauthorized
from producers.jobs import attentive_body
from worker.destinations.attentive_rest import AttentiveRest, rate_for
from worker.destinations.attentive_rest import classify as classify_http
from worker.destinations.base import (
    MAX_BODY_KEPT,
    Bucket,
    credential_tag,
    parse_retry_after,
)

PATH = "/v1/graphql"
LANE = "graphql"
MUTATION = (
    "mutation CreateCustomEvent($input: CreateCustomEventInput!) { createCustomEvent(input: $input) { __typename } }"
)

AUTH_CODES = frozenset({"UNAUTHENTICATED", "UNAUTHORIZED", "FORBIDDEN", "PERMISSION_DENIED", "ACCESS_DENIED"})
INVALID_CODES = frozenset(
    {
        "BAD_USER_INPUT",
        "GRAPHQL_VALIDATION_FAILED",
        "GRAPHQL_PARSE_FAILED",
        "INVALID_ARGUMENT",
        "VALIDATION_ERROR",
        "BAD_REQUEST",
        "NOT_FOUND",
    }
)
RATE_CODES = frozenset({"RATE_LIMITED", "THROTTLED", "TOO_MANY_REQUESTS", "RATE_LIMIT_EXCEEDED"})
SERVER_CODES = frozenset(
    {"INTERNAL_SERVER_ERROR", "INTERNAL_ERROR", "INTERNAL", "SERVICE_UNAVAILABLE", "UNAVAILABLE", "DEADLINE_EXCEEDED"}
)
_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

ErrorClass = Literal["auth", "invalid", "rate", "server", "unknown"]
_BY_CODE: tuple[tuple[ErrorClass, frozenset[str]], ...] = (
    ("auth", AUTH_CODES),
    ("invalid", INVALID_CODES),
    ("rate", RATE_CODES),
    ("server", SERVER_CODES),
)


def graphql_input(job: BaseModel) -> dict[str, Any]:
    """``CreateCustomEventInput`` for a custom event: its Attentive body, properties as a JSON string."""
    body = attentive_body(job)
    if "properties" in body:
        body["properties"] = json.dumps(body["properties"], separators=(",", ":"), ensure_ascii=False)
    return body


def request_body(job: BaseModel) -> dict[str, Any]:
    return {"query": MUTATION, "variables": {"input": graphql_input(job)}}


def error_class(error: dict[str, Any]) -> ErrorClass:
    """The class of one GraphQL error (an item of ``errors``). Pure: the table above."""
    extensions = error.get("extensions") if isinstance(error.get("extensions"), dict) else {}
    code = extensions.get("code")
    status = extensions.get("status", extensions.get("statusCode"))
    if isinstance(code, int | str) and str(code).isdigit():
        status = code
    if isinstance(status, int | str) and str(status).isdigit():
        number = int(status)
        if number in (401, 403):
            return "auth"
        if number == 429:
            return "rate"
        if number >= 500:
            return "server"
        if 400 <= number < 500:
            return "invalid"
    if isinstance(code, str):
        upper = code.upper()
        for name, codes in _BY_CODE:
            if upper in codes:
                return name
        return "unknown"
    message = str(error.get("message") or "").lower()
    if "unauthenticated" in message or "unauthorized" in message or "forbidden" in message:
        return "auth"
    if "rate limit" in message or "too many requests" in message or "throttl" in message:
        return "rate"
    if "internal" in message:
        return "server"
    return "unknown"


def _summary(errors: list[Any]) -> str:
    """Each error's code and message, for the dead letter (truncated to MAX_BODY_KEPT)."""
    kept = []
    for error in errors:
        if not isinstance(error, dict):
            continue
        extensions = error.get("extensions") if isinstance(error.get("extensions"), dict) else {}
        kept.append({"code": extensions.get("code"), "message": error.get("message")})
    return json.dumps(kept, ensure_ascii=False, default=str)[:MAX_BODY_KEPT]


def _codes(errors: list[Any]) -> str:
    """The codes, for the error's detail (logged): codes only, never messages."""
    codes = []
    for error in errors:
        extensions = error.get("extensions") if isinstance(error, dict) else None
        code = extensions.get("code") if isinstance(extensions, dict) else None
        codes.append(str(code) if code is not None and _CODE.match(str(code)) else "no code")
    return ", ".join(dict.fromkeys(codes)) or "no code"


def classify(status: int, body: str, headers: httpx.Headers) -> DeliveryError | None:
    """The error a GraphQL answer stands for, None when the mutation succeeded."""
    if not 200 <= status < 300:
        return classify_http(status, body, headers)
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or ("data" not in answer and "errors" not in answer):
        return ServerError(
            f"HTTP {status} from Attentive GraphQL without data or errors", status=status, body=body[:MAX_BODY_KEPT]
        )
    errors = answer.get("errors")
    if not errors:
        return None
    errors = errors if isinstance(errors, list) else [errors]
    classes = {error_class(e) if isinstance(e, dict) else "unknown" for e in errors}
    kept = _summary(errors)
    detail = f"GraphQL errors from Attentive ({_codes(errors)})"
    if "auth" in classes:
        return Unauthorized(f"{detail}: check the account's token and its scopes", status=status, body=kept)
    if "invalid" in classes:
        return Rejected(detail, status=status, body=kept)
    if "rate" in classes:
        return RateLimited(detail, status=status, body=kept, retry_after=_retry_after(errors, headers))
    if "server" in classes:
        return ServerError(detail, status=status, body=kept)
    return Rejected(detail, status=status, body=kept)


def _retry_after(errors: list[Any], headers: httpx.Headers) -> float | None:
    wait = parse_retry_after(headers.get("retry-after"))
    for error in errors:
        extensions = error.get("extensions") if isinstance(error, dict) else None
        if wait is None and isinstance(extensions, dict):
            wait = parse_retry_after(str(extensions.get("retryAfter") or extensions.get("retry_after") or ""))
    return wait


class AttentiveGraphQL(AttentiveRest):
    """Attentive's API, same host and token as REST, through the GraphQL endpoint. Thread-safe;
    one per worker process."""

    name = "attentive_graphql"

    def endpoint(self, job: BaseModel) -> str:
        return PATH

    def bucket(self, job: BaseModel, account: Account) -> Bucket:
        return Bucket(credential_tag(account.token), LANE, rate_for(self.settings, LANE, account))

    def body(self, job: BaseModel) -> dict[str, Any]:
        return request_body(job)

    classify = staticmethod(classify)
