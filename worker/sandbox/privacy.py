"""The sandbox's stand-in for Attentive's Privacy Request API (deletion requests).

- ``POST /v1/privacy/delete-request`` with ``subjectEmail`` and/or ``subjectPhone`` (strings)
  and an optional ``requestMsg``: 200 ``{"id": "dr-..."}``. A body without a subject, with a
  subject that is not a string, or with another field is 400.
- ``GET /v1/privacy/delete-request/{id}``: 200 ``{"id", "processed", "createdAt",
  "processedAt"}``; a request is processed ``privacy_delay_s`` after it was filed (``0``, the
  default: at once; ``POST /__sandbox/config {"privacy_delay_s": 2}``). An id unknown to the
  token asking is 404, as another account's request would be.
- Both check the Bearer token, count in the per-endpoint-per-token window (429 with
  ``x-ratelimit-*`` headers), and answer injected faults: ``POST /__sandbox/faults`` with
  ``"path": "/v1/privacy/delete-request"`` for filing, ``"/v1/privacy/delete-request/{id}"``
  for checking (the template, matching every id).
- Filed requests are kept in `SandboxState.privacy` (id -> the body, the ``token_tag`` and
  the times) for tests; like every request, they also show in ``/__sandbox/requests``.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from worker.destinations.base import credential_tag
from worker.privacy.api import DELETE_PATH, STATUS_PATH

if TYPE_CHECKING:
    from worker.sandbox.state import SandboxState

Answer = tuple[int, Any, dict[str, str], str]
_FIELDS = {"subjectEmail", "subjectPhone", "requestMsg"}
_STATUS_PREFIX = DELETE_PATH + "/"


def request_id_of(path: str) -> str | None:
    """The request id in a status path, None for any other path."""
    found = path[len(_STATUS_PREFIX) :] if path.startswith(_STATUS_PREFIX) else ""
    return found if found and "/" not in found else None


def file(state: SandboxState, token: str, body: Any) -> Answer:
    """(status, payload, headers, note) for one deletion request filed with a valid ``token``."""
    headers, limited = _window(state, token, DELETE_PATH)
    if limited:
        return 429, {"status": 429, "error": "Too Many Requests"}, headers, "rate limited"
    if not isinstance(body, dict):
        return 400, {"status": 400, "message": "body must be a JSON object"}, headers, "invalid"
    fault = state.fault_for(DELETE_PATH, body)
    if fault is not None:
        return fault.answer(headers)
    unknown = sorted(set(body) - _FIELDS)
    subjects = [body[k] for k in ("subjectEmail", "subjectPhone") if k in body]
    if unknown or not subjects or not all(isinstance(v, str) and v.strip() for v in subjects):
        message = f"unknown field {unknown[0]}" if unknown else "subjectEmail or subjectPhone must be set"
        return 400, {"status": 400, "error": "Bad Request", "message": message}, headers, "invalid"
    if not isinstance(body.get("requestMsg", ""), str):
        return 400, {"status": 400, "message": "requestMsg must be a string"}, headers, "invalid"
    request = f"dr-{uuid.uuid4().hex}"
    with state.lock:
        state.privacy[request] = {"body": body, "token_tag": credential_tag(token), "filed_at": time.time()}
    return 200, {"id": request}, headers, "accepted"


def status(state: SandboxState, token: str, request: str) -> Answer:
    """(status, payload, headers, note) for checking ``request`` with a valid ``token``."""
    headers, limited = _window(state, token, STATUS_PATH)
    if limited:
        return 429, {"status": 429, "error": "Too Many Requests"}, headers, "rate limited"
    fault = state.fault_for(STATUS_PATH, {})
    if fault is not None:
        return fault.answer(headers)
    with state.lock:
        found = dict(state.privacy.get(request) or {})
        delay = state.privacy_delay_s
    if not found or found["token_tag"] != credential_tag(token):
        return 404, {"status": 404, "error": "Not Found"}, headers, "no such request"
    done_at = found["filed_at"] + delay
    processed = time.time() >= done_at
    payload = {
        "id": request,
        "processed": processed,
        "createdAt": _iso(found["filed_at"]),
        "processedAt": _iso(done_at) if processed else None,
    }
    return 200, payload, headers, "processed" if processed else "pending"


def _window(state: SandboxState, token: str, path: str) -> tuple[dict[str, str], bool]:
    allowed, limit, remaining = state.take(token, path)
    return {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": str(remaining)}, not allowed


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
