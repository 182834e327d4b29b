"""Attentive's GraphQL API (beta) for ``custom_event`` jobs, when ATTENTIVE_CUSTOM_EVENTS_API=graphql.

Where: ``POST {ATTENTIVE_BASE_URL}/v1/graphql`` with the account's Bearer token, the body
``{"query": MUTATION, "variables": {"input": {...}}}``. `MUTATION` is a constant: values only
ever travel in ``variables``, never in the document. The input is the job's Attentive body
(`producers.job.models.attentive_body`: ``type``, ``user``, ``externalEventId``, ``occurredAt``) with
``properties`` JSON-encoded as a STRING, as ``CreateCustomEventInput`` wants. The job format is
the same as for REST.

Selection set: ``__typename`` alone. The payload type of ``createCustomEvent`` is not in
the published material, and ``__typename`` is valid on every object type, so the document
cannot fail validation over a field name we guessed; the relay needs nothing back but
success or errors.

Outcomes. An HTTP status other than 2xx is classified as for REST (`attentive.classify`).
A 2xx is delivered only when ``data.createCustomEvent`` came back as an object and
``errors`` is absent or empty. A 2xx may carry ``errors`` (``{"data": null, "errors":
[{"message", "extensions": {"code"}}]}``); each error is sorted into one class
(`error_class`), and the job's outcome is the first class present in this order:

    Unauthorized   UNAUTHENTICATED, UNAUTHORIZED, FORBIDDEN, PERMISSION_DENIED, 401, 403
    Rejected       BAD_USER_INPUT, GRAPHQL_VALIDATION_FAILED, GRAPHQL_PARSE_FAILED,
                   INVALID_ARGUMENT, VALIDATION_ERROR, BAD_REQUEST, NOT_FOUND, other 4xx
    RateLimited    RATE_LIMITED, THROTTLED, TOO_MANY_REQUESTS, RATE_LIMIT_EXCEEDED,
                   RESOURCE_EXHAUSTED, QUOTA_EXCEEDED, 429; any other code naming a rate
                   limit, throttling, too many requests or a quota (REQUEST_RATE_LIMITED,
                   ThrottlingException)
    ServerError    INTERNAL_SERVER_ERROR, INTERNAL_ERROR, SERVICE_UNAVAILABLE, UNAVAILABLE,
                   BAD_GATEWAY, DEADLINE_EXCEEDED, TIMEOUT, GATEWAY_TIMEOUT, 5xx; any other
                   code naming a timeout
    Rejected       anything else

The code is ``extensions.code`` (or a numeric ``extensions.status``). A code missing or not
placed above, the message decides: "unauthenticated"/"unauthorized"/"forbidden" Unauthorized,
"rate limit"/"too many requests"/"throttl..." RateLimited, "timeout"/"timed out"/"internal"
ServerError; else Rejected. A known code wins over the message, so a validation error that
mentions a timeout field stays Rejected.

Auth first: nothing else can succeed without it. A known validation error next: the same
document and variables will fail the same way, so waiting is pointless even if another error
was transient. Throttling and timeouts are retried (RateLimited also backs the whole bucket
off), however the server spells them: dead-lettering them would lose events a later attempt
delivers. An error nothing identifies is Rejected rather than retried: the relay cannot know
it heals, retrying resends an identical request up to ATTENTIVE_MAX_ATTEMPTS times, and the
dead letter keeps the text for a replay once understood.

A 2xx with neither a ``createCustomEvent`` result nor errors (``{"data": null}``,
``{"errors": []}``, a body that is not JSON) is a ServerError: nothing says the event exists
or why not, so it is retried like a 5xx (Attentive deduplicates by ``externalEventId``), and
its ``body`` (up to `base.MAX_BODY_KEPT` characters) goes to the dead letter. For errors, the
``body`` keeps each error's code and message (same limit); the detail names codes only.

Rate limits: lane ``graphql`` per token, at ATTENTIVE_RATE_LIMITS["graphql"], else the
account's ``rate_limit``, else ATTENTIVE_RATE_LIMIT (`attentive.rate_for`).

Host, token and sending are `attentive.AttentiveApi`'s, as for REST: the two destinations
are siblings over it, neither a kind of the other.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import httpx
from pydantic import BaseModel

from producers.accounts import Account
from producers.errors import DeliveryError, RateLimited, Rejected, ServerError, Unauthorized
from producers.job.models import COUNTED_KINDS, attentive_body
from producers.settings import Settings
from worker.destinations.attentive import AttentiveApi
from worker.destinations.attentive import classify as classify_http
from worker.destinations.base import MAX_BODY_KEPT, Bucket, Outcome, parse_retry_after

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
RATE_CODES = frozenset(
    {"RATE_LIMITED", "THROTTLED", "TOO_MANY_REQUESTS", "RATE_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"}
)
SERVER_CODES = frozenset(
    {
        "INTERNAL_SERVER_ERROR",
        "INTERNAL_ERROR",
        "INTERNAL",
        "SERVICE_UNAVAILABLE",
        "UNAVAILABLE",
        "BAD_GATEWAY",
        "DEADLINE_EXCEEDED",
        "TIMEOUT",
        "GATEWAY_TIMEOUT",
    }
)
_RATE_CODE = re.compile(r"RATE_?LIMIT|THROTTL|TOO_?MANY_?REQUESTS|RESOURCE_?EXHAUSTED|QUOTA")
_TIMEOUT_CODE = re.compile(r"TIME_?OUT|TIMED_?OUT|DEADLINE")
_RATE_MESSAGE = re.compile(r"rate[ _-]?limit|too many requests|throttl|resource[ _]exhausted")
_TIMEOUT_MESSAGE = re.compile(r"\btime[ _-]?outs?\b|\btimed[ _-]?out\b|\bdeadline exceeded\b")
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


def _extensions(error: dict[str, Any]) -> dict[str, Any]:
    """An error's ``extensions`` object; {} when it is absent or not an object."""
    extensions = error.get("extensions")
    return extensions if isinstance(extensions, dict) else {}


def error_class(error: dict[str, Any]) -> ErrorClass:
    """The class of one GraphQL error (an item of ``errors``). Pure: the table above."""
    extensions = _extensions(error)
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
        # Servers name throttling and timeouts in many ways (REQUEST_RATE_LIMITED,
        # ThrottlingException, GATEWAY_TIMEOUT); dead-lettering those as rejected would
        # lose events that a later attempt delivers.
        if _RATE_CODE.search(upper):
            return "rate"
        if _TIMEOUT_CODE.search(upper):
            return "server"
    message = str(error.get("message") or "").lower()
    if "unauthenticated" in message or "unauthorized" in message or "forbidden" in message:
        return "auth"
    if _RATE_MESSAGE.search(message):
        return "rate"
    if _TIMEOUT_MESSAGE.search(message) or "internal" in message:
        return "server"
    return "unknown"


def _summary(errors: list[Any]) -> str:
    """Each error's code and message, for the dead letter (truncated to MAX_BODY_KEPT)."""
    kept = []
    for error in errors:
        if not isinstance(error, dict):
            continue
        kept.append({"code": _extensions(error).get("code"), "message": error.get("message")})
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
    if errors:
        return _from_errors(errors if isinstance(errors, list) else [errors], status, headers)
    data = answer.get("data")
    if isinstance(data, dict) and isinstance(data.get("createCustomEvent"), dict):
        return None
    # Nothing says the event exists, and nothing says why: a fault on Attentive's side, retried
    # like a 5xx (a retry of an event that was created after all is deduplicated by
    # externalEventId). Counting it delivered would lose the event without a trace.
    return ServerError(
        f"HTTP {status} from Attentive GraphQL with no createCustomEvent result and no errors",
        status=status,
        body=body[:MAX_BODY_KEPT],
    )


def _from_errors(errors: list[Any], status: int, headers: httpx.Headers) -> DeliveryError:
    """The error for a non-empty ``errors``: the first class present in the table's order."""
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


class AttentiveGraphQL:
    """Attentive's API, same host and token as REST, through the GraphQL endpoint. Thread-safe;
    one per worker process."""

    name = "attentive_graphql"

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        self.api = AttentiveApi(settings, transport)

    def close(self) -> None:
        self.api.close()

    def endpoint(self, job: BaseModel) -> str:
        return PATH

    def bucket(self, job: BaseModel, account: Account) -> Bucket:
        return self.api.bucket(LANE, account)

    def deliver(self, job: BaseModel, account: Account) -> Outcome:
        """POST the mutation with the job as its input; the answer read by `classify`."""
        counted = job.kind in COUNTED_KINDS  # type: ignore[attr-defined]
        return self.api.send(PATH, request_body(job), account, classify, counted=counted)
