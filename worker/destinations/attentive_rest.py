"""Attentive's REST API: one endpoint per kind, a Bearer token per account.

Rules: the job models (`producers.jobs`) are Attentive's own shapes, checked at enqueue and
again before each attempt. Rate limits: one bucket per token and endpoint, at Attentive's
published limits (150/s, identity 10/s) unless configured. Outcomes: classified by HTTP
status alone (`classify`).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from pydantic import BaseModel

from producers.accounts import Account
from producers.errors import DeliveryError, Unauthorized
from producers.jobs import COUNTED_KINDS, EVENT_PATHS, attentive_body
from producers.settings import Settings
from worker.destinations.base import (
    Bucket,
    Outcome,
    classify_status,
    credential_tag,
    http_client,
    parse_retry_after,
    post,
)

#: Attentive's published per-endpoint limits that differ from the default (requests/second).
PUBLISHED_LIMITS: dict[str, float] = {"identity": 10.0}


def classify(status: int, body: str, headers: httpx.Headers) -> DeliveryError | None:
    """The error a status stands for, None for 2xx. Pure: the retry mapping's first half."""
    return classify_status(
        status,
        body,
        service="Attentive",
        retry_after=parse_retry_after(headers.get("retry-after")),
        auth_hint="check the account's token and its scopes",
    )


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
        content = json.dumps(self.body(job), separators=(",", ":"), ensure_ascii=False).encode()
        return post(
            self.http,
            self.endpoint(job),
            content,
            lambda r: self.classify(r.status_code, r.text, r.headers),
            headers={"Authorization": f"Bearer {account.token.get_secret_value()}"},
            counted=job.kind in COUNTED_KINDS,  # type: ignore[attr-defined]
        )

    def body(self, job: BaseModel) -> dict[str, Any]:
        """What the call sends: the job's Attentive body."""
        return attentive_body(job)

    classify = staticmethod(classify)

    def whoami(self, account: Account) -> int:
        """The HTTP status of ``GET /v1/me`` with the account's token (the CLI's readiness
        check). Raises httpx errors."""
        token = account.token.get_secret_value() if account.token else ""
        return self.http.get("/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code
