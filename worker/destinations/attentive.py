"""What Attentive's REST and GraphQL destinations share: one host, one Bearer token per account,
one rate bucket per token and endpoint, and the reading of an HTTP status.

`AttentiveApi` is the account-facing half of both destinations (`attentive_rest`,
`attentive_graphql`), each of which holds one: it owns the HTTP client to ATTENTIVE_BASE_URL,
names the bucket of a call (``credential_tag(account.token)`` and the endpoint's lane, so the
Redis keys of the rate buckets are those of every earlier release), and sends a JSON body with
the account's token. What differs, the path, the body and how a 2xx is read, stays with each
destination. The Privacy Request API (`worker.privacy.api`) calls the same host with the
same tokens and buckets through one as well. The readiness check (``attentive-relay check``) and the pause probe ask
``GET /v1/me`` through `AttentiveApi.whoami`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from producers.accounts import Account
from producers.errors import DeliveryError, Unauthorized
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

Classify = Callable[[int, str, httpx.Headers], DeliveryError | None]
"""How a destination reads an answer: (status, body, headers) to an error, None when delivered."""


def classify(status: int, body: str, headers: httpx.Headers) -> DeliveryError | None:
    """The error an Attentive HTTP status stands for, None for 2xx. Pure: the retry mapping's
    first half (429 waits ``Retry-After`` when given)."""
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


def missing_token(account: Account) -> Outcome | None:
    """An `Unauthorized` outcome naming the setting to fill in when the account has no
    Attentive token, None when it has one."""
    if account.token is not None and account.token.get_secret_value():
        return None
    return Outcome(None, Unauthorized(f"{account.token_setting} is not set"), 0.0)


def bearer(account: Account) -> dict[str, str]:
    """The ``Authorization`` header carrying the account's token (empty when it has none)."""
    token = account.token.get_secret_value() if account.token else ""
    return {"Authorization": f"Bearer {token}"}


class AttentiveApi:
    """Calls to ATTENTIVE_BASE_URL on behalf of an account. Thread-safe; one per user
    (a destination, the privacy API) and process."""

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self.http = http_client(settings.attentive_base_url, settings.attentive_timeout_s, transport)

    def close(self) -> None:
        self.http.close()

    def bucket(self, lane: str, account: Account) -> Bucket:
        """The rate limit of the account's token at one endpoint (``lane``), at `rate_for`."""
        return Bucket(credential_tag(account.token), lane, rate_for(self.settings, lane, account))

    def send(self, path: str, body: dict[str, Any], account: Account, classify: Classify, *, counted: bool) -> Outcome:
        """POST ``body`` as compact JSON to ``path`` with the account's token and classify the
        answer (`base.post`: ``counted`` makes a timeout after sending `Uncertain`). An account
        without a token is `Unauthorized` naming the setting to fill in, and nothing is sent.
        Never raises for HTTP statuses or network failures."""
        missing = missing_token(account)
        if missing is not None:
            return missing
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        return post(
            self.http,
            path,
            content,
            lambda r: classify(r.status_code, r.text, r.headers),
            headers=bearer(account),
            counted=counted,
        )

    def whoami(self, account: Account) -> int:
        """The HTTP status of ``GET /v1/me`` with the account's token (the CLI's readiness
        check, the pause probe). Raises httpx errors."""
        return self.http.get("/v1/me", headers=bearer(account)).status_code
