"""Attentive's Privacy Request API: file a deletion request, and ask whether it was processed.

    POST /v1/privacy/delete-request        {"subjectEmail"|"subjectPhone": ..., "requestMsg": ...}
                                           2xx: {"id": "..."}
    GET  /v1/privacy/delete-request/{id}   2xx: {"id", "processed": true|false, "processedAt", ...}

The reference (``attentive-api.md``) gives the paths, the request fields and that the answers
carry "the request's id" and "whether it was processed and its timestamps", not the field
names: these read ``id`` (or ``requestId``) and ``processed`` (or a ``processedAt`` that is
set), and keep the rest of the body opaque. A 2xx without an id is treated as a rejection, so
it is visible rather than taken for a request that can be polled.

Each call uses the account's own Bearer token, and counts in a bucket of its own per token and
endpoint (`PrivacyApi.bucket`) at the account's rate, as deliveries do. Outcomes are classified
like deliveries' (`worker.destinations.base.classify_status`): 429, 5xx and network failures
are transient, any other 4xx permanent. A timeout after the request left is a plain
`NetworkError`: a deletion request filed twice deletes the same person, so retrying is safe.
Never raises for an HTTP status or a network failure; messages carry no phone, email or token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from producers.accounts import Account
from producers.errors import DeliveryError, Rejected
from producers.settings import Settings
from worker.destinations.attentive import AttentiveApi, bearer, classify, missing_token
from worker.destinations.base import Bucket, Outcome, exchange

DELETE_PATH = "/v1/privacy/delete-request"
STATUS_PATH = DELETE_PATH + "/{id}"
FILE_LANE = "privacy_delete"
"""The rate-limit lane (`ATTENTIVE_RATE_LIMITS` key) of filing requests."""
STATUS_LANE = "privacy_status"
"""The rate-limit lane of checking them."""


def delete_body(subject: str, message: str) -> dict[str, str]:
    """The request body naming ``subject``, a canonical phone number (E.164, ``+...``) or email
    (`producers.store.erasure.identifier`); ``message`` is the audit trail's ``requestMsg``."""
    field = "subjectEmail" if "@" in subject else "subjectPhone"
    return {field: subject, "requestMsg": message}


@dataclass(frozen=True)
class Filed:
    """What filing produced: ``request_id`` is set exactly when ``outcome.error`` is None."""

    outcome: Outcome
    request_id: str | None = None


@dataclass(frozen=True)
class Checked:
    """What checking produced: whether Attentive processed the request (when it answered 2xx)."""

    outcome: Outcome
    processed: bool = False
    processed_at: str | None = None


class PrivacyApi:
    """Thread-safe; one per process. ``transport`` replaces the network (tests)."""

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self.attentive = AttentiveApi(settings, transport)

    def close(self) -> None:
        self.attentive.close()

    def bucket(self, account: Account, lane: str) -> Bucket:
        """The rate limit a call in ``lane`` (`FILE_LANE`, `STATUS_LANE`) counts against."""
        return self.attentive.bucket(lane, account)

    def file(self, account: Account, subject: str, message: str) -> Filed:
        """File a deletion request for ``subject`` with ``account``'s token."""
        missing = missing_token(account)
        if missing is not None:
            return Filed(missing)
        content = json.dumps(delete_body(subject, message), separators=(",", ":"), ensure_ascii=False).encode()
        outcome, response = exchange(
            lambda: self.attentive.http.post(DELETE_PATH, content=content, headers=bearer(account)), _classify
        )
        if outcome.error is not None or response is None:
            return Filed(outcome)
        body = _json(response)
        found = body.get("id") or body.get("requestId")
        if not isinstance(found, str | int) or isinstance(found, bool) or not str(found).strip():
            error = Rejected(
                f"HTTP {response.status_code} from Attentive without a request id: it may be filed; check in Attentive",
                status=response.status_code,
                body=response.text[:2000],
            )
            return Filed(_with_error(outcome, error))
        return Filed(outcome, str(found))

    def check(self, account: Account, request_id: str) -> Checked:
        """Ask whether request ``request_id`` (filed with ``account``'s token) was processed."""
        missing = missing_token(account)
        if missing is not None:
            return Checked(missing)
        path = STATUS_PATH.format(id=quote(request_id, safe=""))  # an id is Attentive's text: never a path
        outcome, response = exchange(lambda: self.attentive.http.get(path, headers=bearer(account)), _classify)
        if outcome.error is not None or response is None:
            return Checked(outcome)
        body = _json(response)
        processed_at = body.get("processedAt")
        processed = body.get("processed") is True or (isinstance(processed_at, str) and bool(processed_at))
        return Checked(outcome, processed, processed_at if isinstance(processed_at, str) else None)


def _classify(response: httpx.Response) -> DeliveryError | None:
    return classify(response.status_code, response.text, response.headers)


def _with_error(outcome: Outcome, error: DeliveryError) -> Outcome:
    return Outcome(outcome.status, error, outcome.elapsed_s, outcome.ratelimit_limit, outcome.ratelimit_remaining)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
