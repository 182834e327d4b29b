"""Attentive's REST API: one endpoint per kind, a Bearer token per account.

Rules: the job models (`producers.jobs`) are Attentive's own shapes, checked at enqueue and
again before each attempt. Rate limits: one bucket per token and endpoint, at Attentive's
published limits (150/s, identity 10/s) unless configured. Outcomes: classified by HTTP
status alone (`classify`).
"""

from __future__ import annotations

import json

import httpx
from pydantic import BaseModel

from producers.accounts import Account
from producers.errors import DeliveryError, RateLimited, Rejected, ServerError, Unauthorized
from producers.jobs import EVENT_PATHS, attentive_body
from producers.settings import Settings
from worker.destinations.base import (
    MAX_BODY_KEPT,
    Bucket,
    Outcome,
    credential_tag,
    http_client,
    parse_retry_after,
    post,
)

#: Attentive's published per-endpoint limits that differ from the default (requests/second).
PUBLISHED_LIMITS: dict[str, float] = {"identity": 10.0}


def classify(status: int, body: str, headers: httpx.Headers) -> DeliveryError | None:
    """The error a status stands for, None for 2xx. Pure: the retry mapping's first half."""
    if 200 <= status < 300:
        return None
    kept = body[:MAX_BODY_KEPT]
    if status == 429:
        return RateLimited(
            "HTTP 429 from Attentive", body=kept, retry_after=parse_retry_after(headers.get("retry-after"))
        )
    if status in (401, 403):
        return Unauthorized(
            f"HTTP {status} from Attentive: check the account's token and its scopes", status=status, body=kept
        )
    if status >= 500:
        return ServerError(f"HTTP {status} from Attentive", status=status, body=kept)
    return Rejected(f"HTTP {status} from Attentive", status=status, body=kept)


def rate_for(settings: Settings, lane: str, account: Account) -> float:
    """Requests per second for one endpoint (``lane``) and token: ATTENTIVE_RATE_LIMITS, then
    Attentive's published limit, then the account's ``rate_limit``, then ATTENTIVE_RATE_LIMIT."""
    configured = settings.attentive_rate_limits.get(lane) or PUBLISHED_LIMITS.get(lane)
    return configured or account.rate_limit or settings.attentive_rate_limit


class AttentiveRest:
    """Thread-safe; one per worker process."""

    name = "attentive_rest"

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self.http = http_client(settings.attentive_base_url, settings.attentive_timeout_s, transport)

    def close(self) -> None:
        self.http.close()

    def endpoint(self, job: BaseModel) -> str:
        return EVENT_PATHS[job.kind]  # type: ignore[attr-defined]

    def bucket(self, job: BaseModel, account: Account) -> Bucket:
        lane: str = job.kind  # type: ignore[attr-defined]
        return Bucket(credential_tag(account.token), lane, rate_for(self.settings, lane, account))

    def deliver(self, job: BaseModel, account: Account) -> Outcome:
        if account.token is None or not account.token.get_secret_value():
            return Outcome(None, Unauthorized(f"{account.token_setting} is not set"), 0.0)
        content = json.dumps(attentive_body(job), separators=(",", ":"), ensure_ascii=False).encode()
        return post(
            self.http,
            self.endpoint(job),
            content,
            lambda r: classify(r.status_code, r.text, r.headers),
            headers={"Authorization": f"Bearer {account.token.get_secret_value()}"},
        )

    def whoami(self, account: Account) -> int:
        """The HTTP status of ``GET /v1/me`` with the account's token (the CLI's readiness
        check). Raises httpx errors."""
        token = account.token.get_secret_value() if account.token else ""
        return self.http.get("/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code
