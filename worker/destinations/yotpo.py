"""Yotpo SMS & Email: "create or update custom customer event", for ``yotpo_custom_event`` jobs.

Where: ``POST {YOTPO_BASE_URL}{PATH}`` with the account's store id (app key) in the path.
`PATH` is this module's choice in the shape of Yotpo's Core API
(``/core/v3/stores/{store_id}/...``): the custom-event endpoint's exact path was NOT confirmed
from public material (develop.yotpo.com names the call, not the path we could read), so check
it against Yotpo's reference before production use and change it here. Yotpo announced the end
of its SMS & Email product at the end of 2025; this destination serves stores still on it and
anyone migrating their events.

Auth: the account's access token in the ``X-Yotpo-Token`` header, which Yotpo's Core API
accepts as well as an access-token query parameter. The header alone is sent, so no URL ever
carries the token (URLs end up in logs and traces); the store id is in the path, so URLs are
still not logged here. The store id and token come from the job's account
(``Account.yotpo_store_id`` / ``yotpo_access_token``: YOTPO_STORE_ID / YOTPO_ACCESS_TOKEN for
the default account); a missing one is `Unauthorized` naming the setting.

Body: the job's fields as Yotpo names them (`producers.job.yotpo.yotpo_body`). Rules are the job
model's (`producers.job.yotpo`), checked at enqueue and before each attempt.

Rate limits: Yotpo allows 5 requests per second per store (YOTPO_RATE_LIMIT); one bucket per
store id, lane ``yotpo``. Outcomes by HTTP status as for Attentive REST (2xx
delivered, 429 rate limited, 401/403 unauthorized, 5xx server error, other 4xx rejected); on
429 the wait is ``Retry-After``, else ``RateLimit-Reset`` (seconds), and ``RateLimit-Remaining``
feeds the outcome's ``ratelimit_remaining`` so a used-up second pauses the bucket.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from producers.accounts import DEFAULT, Account
from producers.errors import DeliveryError, Unauthorized
from producers.job.yotpo import yotpo_body
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

PATH = "/core/v3/stores/{store_id}/custom_events"
"""The custom-event endpoint under YOTPO_BASE_URL. Not confirmed from public material (see above)."""

LANE = "yotpo"


def classify(status: int, body: str, headers: httpx.Headers) -> DeliveryError | None:
    """The error a Yotpo status stands for, None for 2xx."""
    wait = parse_retry_after(headers.get("retry-after")) or parse_retry_after(headers.get("ratelimit-reset"))
    return classify_status(
        status, body, service="Yotpo", retry_after=wait, auth_hint="check the account's store id and access token"
    )


def missing_setting(account: Account) -> str | None:
    """The setting to fill in when ``account`` cannot call Yotpo, None when it can."""
    for field, env in (("yotpo_store_id", "YOTPO_STORE_ID"), ("yotpo_access_token", "YOTPO_ACCESS_TOKEN")):
        value = getattr(account, field)
        if value is None or not (value if isinstance(value, str) else value.get_secret_value()):
            return env if account.name == DEFAULT else f"ATTENTIVE_ACCOUNTS {account.name}.{field}"
    return None


class Yotpo:
    """Thread-safe; one per worker process."""

    name = "yotpo"

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self.http = http_client(settings.yotpo_base_url, settings.attentive_timeout_s, transport)

    def close(self) -> None:
        self.http.close()

    def endpoint(self, job: BaseModel) -> str:
        # The template, not the store id: a stable label for logs and metrics.
        return PATH

    def bucket(self, job: BaseModel, account: Account) -> Bucket:
        # Yotpo limits each store, whichever token calls: one bucket per store id.
        return Bucket(credential_tag(account.yotpo_store_id), LANE, self.settings.yotpo_rate_limit)

    def deliver(self, job: BaseModel, account: Account) -> Outcome:
        missing = missing_setting(account)
        if missing is not None or account.yotpo_store_id is None or account.yotpo_access_token is None:
            return Outcome(None, Unauthorized(f"{missing} is not set"), 0.0)
        content = json.dumps(yotpo_body(job), separators=(",", ":"), ensure_ascii=False).encode()  # type: ignore[arg-type]
        return post(
            self.http,
            PATH.format(store_id=quote(account.yotpo_store_id, safe="")),
            content,
            lambda r: classify(r.status_code, r.text, r.headers),
            remaining_headers=("x-ratelimit-remaining", "ratelimit-remaining"),
            headers={"X-Yotpo-Token": account.yotpo_access_token.get_secret_value()},
        )
