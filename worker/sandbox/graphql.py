"""The sandbox's stand-in for Attentive's GraphQL API: ``POST /v1/graphql``, ``createCustomEvent``.

It answers as a GraphQL server does: HTTP 200, with ``errors`` (each ``{"message",
"extensions": {"code"}}``) and ``"data": null`` when the mutation fails:

- a missing or wrong Bearer token: ``UNAUTHENTICATED``;
- more than the per-token rate in one second: ``RATE_LIMITED`` (with the same
  ``x-ratelimit-*`` headers and window as the REST endpoints);
- a body that is not ``{"query": ..., "variables": {...}}`` with a ``createCustomEvent(input:
  $var)`` document: ``GRAPHQL_VALIDATION_FAILED``;
- an input the relay's own rules refuse (`producers.job.validation.parse_job` of a ``custom_event``
  built from the variables, ``properties`` parsed from its JSON string; a ``properties`` that
  is not a string holding a JSON object is refused too): one ``BAD_USER_INPUT`` error per
  problem, with the field in ``extensions.field``;
- an injected fault: ``{"graphql_code": "BAD_USER_INPUT", "message": "..."}`` answers that
  error inside a 200; a fault with a ``status`` alone answers that HTTP status.

Success: ``{"data": {"createCustomEvent": {"__typename": "CreateCustomEventPayload"}}}``. An
event older than the freshness window is answered as a success and noted ``dropped_stale``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from producers.errors import InvalidJob
from producers.job import freshness
from producers.job.validation import parse_job
from worker.sandbox.state import SandboxState, error

PATH = "/v1/graphql"
PAYLOAD = {"data": {"createCustomEvent": {"__typename": "CreateCustomEventPayload"}}}
_MUTATION = re.compile(r"\bmutation\b.*\bcreateCustomEvent\s*\(\s*input\s*:\s*\$(\w+)\s*\)", re.DOTALL)

Answer = tuple[int, Any, dict[str, str], str]


def answer(state: SandboxState, token: str | None, body: Any) -> Answer:
    """(status, payload, headers, note) for one ``POST /v1/graphql`` with a valid or absent ``token``."""
    if token is None:
        return 200, error("UNAUTHENTICATED", "missing or invalid access token"), {}, "bad token"
    allowed, limit, remaining = state.take(token, PATH)
    headers = {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": str(remaining)}
    if not allowed:
        return 200, error("RATE_LIMITED", "rate limit exceeded"), {**headers, "Retry-After": "1"}, "rate limited"
    variables = body.get("variables") if isinstance(body, dict) else None
    found = _MUTATION.search(body["query"]) if isinstance(body, dict) and isinstance(body.get("query"), str) else None
    event = variables.get(found.group(1)) if found and isinstance(variables, dict) else None
    if not isinstance(event, dict):
        message = "expected a createCustomEvent(input: $var) mutation with the input in variables"
        return 200, error("GRAPHQL_VALIDATION_FAILED", message), headers, "invalid"
    fault = state.fault_for(PATH, event)
    if fault is not None:
        return fault.answer(headers)
    properties = event.get("properties")
    if properties is not None:
        try:
            properties = json.loads(properties) if isinstance(properties, str) else None
        except ValueError:
            properties = None
        if not isinstance(properties, dict):
            message = "properties must be a string holding a JSON object"
            return 200, error("BAD_USER_INPUT", message, field="properties"), headers, "invalid"
    now = datetime.now(UTC)
    candidate = {**event, "kind": "custom_event"}
    if properties is not None:
        candidate["properties"] = properties
    try:
        job = parse_job(candidate, state.settings, now, at_enqueue=False)
    except InvalidJob as err:
        errors = [{"message": str(p), "extensions": {"code": "BAD_USER_INPUT", "field": p.field}} for p in err.problems]
        return 200, {"data": None, "errors": errors}, headers, "invalid"
    if freshness.is_stale(getattr(job, "occurredAt", None), now, state.settings.freshness_s):
        return 200, PAYLOAD, headers, "dropped_stale"
    return 200, PAYLOAD, headers, "accepted"
