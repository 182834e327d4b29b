"""The HTTP client for Attentive's REST API: one call per job, an `Outcome` per call.

It never raises for an HTTP status or a network failure: those become the `DeliveryError`
in the outcome, which the retry policy turns into a decision. The transport is injectable
(``httpx.MockTransport`` or any ``httpx.BaseTransport``), so tests need no patching.
"""

from __future__ import annotations

import email.utils
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel

from producers.errors import (
    DeliveryError,
    NetworkError,
    RateLimited,
    Rejected,
    ServerError,
    Unauthorized,
)
from producers.jobs import EVENT_PATHS, attentive_body
from producers.settings import Settings

VERSION = "0.1.0"
USER_AGENT = f"attentive-relay/{VERSION} (+queue-backed delivery worker; httpx/{httpx.__version__})"
MAX_BODY_KEPT = 2000


@dataclass(frozen=True)
class Outcome:
    """What one call produced. ``error`` is None exactly when Attentive answered 2xx."""

    status: int | None
    error: DeliveryError | None
    elapsed_s: float
    ratelimit_limit: int | None = None
    ratelimit_remaining: int | None = None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)  # RFC 9110 says an integer; some servers send decimals
    except ValueError:
        pass
    else:
        return seconds if 0 <= seconds < 1e9 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _int_header(headers: httpx.Headers, name: str) -> int | None:
    raw = headers.get(name)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


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
            f"HTTP {status} from Attentive: check ATTENTIVE_API_TOKEN and its scopes", status=status, body=kept
        )
    if status >= 500:
        return ServerError(f"HTTP {status} from Attentive", status=status, body=kept)
    return Rejected(f"HTTP {status} from Attentive", status=status, body=kept)


class AttentiveClient:
    """One pooled HTTP client per process. Thread-safe (httpx.Client is)."""

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        token = settings.attentive_api_token
        self._has_token = token is not None and bool(token.get_secret_value())
        headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json", "Accept": "application/json"}
        if self._has_token:
            headers["Authorization"] = f"Bearer {token.get_secret_value()}"  # type: ignore[union-attr]
        self._http = httpx.Client(
            base_url=settings.attentive_base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(settings.attentive_timeout_s),
            transport=transport,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A raw call (used by the CLI's read-only commands). Raises httpx errors."""
        return self._http.request(method, path, **kwargs)

    def deliver(self, job: BaseModel) -> Outcome:
        """POST the job to its endpoint. Never raises for HTTP or network failures."""
        started = time.monotonic()
        if not self._has_token:
            return Outcome(None, Unauthorized("ATTENTIVE_API_TOKEN is not set"), 0.0)
        path = EVENT_PATHS[job.kind]  # type: ignore[attr-defined]
        content = json.dumps(attentive_body(job), separators=(",", ":"), ensure_ascii=False).encode()
        try:
            response = self._http.post(path, content=content)
        except httpx.TimeoutException as exc:
            return Outcome(None, NetworkError(f"timeout ({type(exc).__name__})"), time.monotonic() - started)
        except httpx.TransportError as exc:
            return Outcome(None, NetworkError(f"connection failed ({type(exc).__name__})"), time.monotonic() - started)
        return Outcome(
            status=response.status_code,
            error=classify(response.status_code, response.text, response.headers),
            elapsed_s=time.monotonic() - started,
            ratelimit_limit=_int_header(response.headers, "x-ratelimit-limit"),
            ratelimit_remaining=_int_header(response.headers, "x-ratelimit-remaining"),
        )
