"""What every destination shares: the `Outcome` of one call, the `Bucket` it is rate-limited
in, and the HTTP plumbing (one client per destination, over an injectable transport).

A destination turns a valid job and its account into one HTTP call and an `Outcome`. It never
raises for an HTTP status or a network failure: those become the outcome's `DeliveryError`,
which the retry policy (`worker.policy`) turns into a decision. Retry, freshness, dead-letters,
leases and counters know nothing of destinations.
"""

from __future__ import annotations

import email.utils
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, SecretStr

import producers
from producers.accounts import Account
from producers.errors import (
    DeliveryError,
    NetworkError,
    RateLimited,
    Rejected,
    ServerError,
    Unauthorized,
    Uncertain,
)
from worker.destinations.transport import Http, LateToLeave

VERSION = producers.__version__
USER_AGENT = f"attentive-relay/{VERSION} (+queue-backed delivery worker; httpx/{httpx.__version__})"
MAX_BODY_KEPT = 2000
"""How much of a response body an outcome keeps for the dead-letter entry."""


@dataclass(frozen=True)
class Outcome:
    """What one call produced. ``error`` is None exactly when the destination accepted the job."""

    status: int | None
    error: DeliveryError | None
    elapsed_s: float
    ratelimit_limit: int | None = None
    ratelimit_remaining: int | None = None


@dataclass(frozen=True)
class Bucket:
    """One rate limit: requests per second for one credential (``tag``, a hash) and one endpoint."""

    tag: str
    lane: str
    rate: float


class Destination(Protocol):
    """One API the relay delivers to. One instance per worker process; thread-safe."""

    name: str

    def endpoint(self, job: BaseModel) -> str:
        """Where the job goes (a path, for logs and metrics; never holds personal data)."""
        ...

    def bucket(self, job: BaseModel, account: Account) -> Bucket:
        """The rate limit this call counts against."""
        ...

    def deliver(self, job: BaseModel, account: Account) -> Outcome:
        """Make the call. Never raises for HTTP statuses or network failures; raises
        `LateToLeave`, having sent nothing, when the delivery's send slot passed first."""
        ...

    def close(self) -> None: ...


def credential_tag(*parts: SecretStr | str | None) -> str:
    """A short hash naming a credential in Redis keys, never the credential itself."""
    text = "\x00".join(p.get_secret_value() if isinstance(p, SecretStr) else (p or "") for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def http_client(base_url: str, timeout_s: float, transport: httpx.BaseTransport | None) -> Http:
    """The client a destination sends through (no auth: each call carries its account's), over
    `worker.destinations.transport.StdlibTransport` unless another transport is given."""
    headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json", "Accept": "application/json"}
    return Http(base_url, headers, timeout_s, transport)


def classify_status(
    status: int, body: str, *, service: str, retry_after: float | None, auth_hint: str
) -> DeliveryError | None:
    """The error an HTTP status stands for, None for 2xx: 429 rate limited (waiting
    ``retry_after`` when known), 401/403 unauthorized (with ``auth_hint``), 5xx server error,
    any other status rejected. Pure: the retry mapping's first half, for every destination."""
    if 200 <= status < 300:
        return None
    kept = body[:MAX_BODY_KEPT]
    if status == 429:
        return RateLimited(f"HTTP 429 from {service}", body=kept, retry_after=retry_after)
    if status in (401, 403):
        return Unauthorized(f"HTTP {status} from {service}: {auth_hint}", status=status, body=kept)
    if status >= 500:
        return ServerError(f"HTTP {status} from {service}", status=status, body=kept)
    return Rejected(f"HTTP {status} from {service}", status=status, body=kept)


def post(
    http: Http,
    path: str,
    content: bytes,
    classify: Callable[[httpx.Response], DeliveryError | None],
    *,
    remaining_headers: tuple[str, ...] = ("x-ratelimit-remaining",),
    counted: bool = False,
    **kwargs: Any,
) -> Outcome:
    """POST and classify the answer. A timeout or a connection failure is a `NetworkError`,
    except when the request had left and ``counted`` says a second send would count twice:
    then it is `Uncertain`. The outcome's ``ratelimit_remaining`` is the first of
    ``remaining_headers`` present."""
    outcome, _ = exchange(
        lambda: http.post(path, content=content, **kwargs),
        classify,
        remaining_headers=remaining_headers,
        counted=counted,
    )
    return outcome


def exchange(
    send: Callable[[], httpx.Response],
    classify: Callable[[httpx.Response], DeliveryError | None],
    *,
    remaining_headers: tuple[str, ...] = ("x-ratelimit-remaining",),
    counted: bool = False,
) -> tuple[Outcome, httpx.Response | None]:
    """Make one call (``send``) and classify it as `post` does: (the outcome, the response,
    None when no answer came). For callers that read the answer's body as well. `LateToLeave`
    (nothing sent) is raised for the delivery to take a new slot."""
    started = time.monotonic()
    try:
        response = send()
    except LateToLeave:
        raise  # nothing was sent: the delivery takes a new slot
    except httpx.TransportError as exc:
        return Outcome(None, transport_error(exc, counted), time.monotonic() - started), None
    outcome = Outcome(
        status=response.status_code,
        error=classify(response),
        elapsed_s=time.monotonic() - started,
        ratelimit_limit=int_header(response.headers, "x-ratelimit-limit"),
        ratelimit_remaining=next(
            (v for v in (int_header(response.headers, h) for h in remaining_headers) if v is not None), None
        ),
    )
    return outcome, response


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


def transport_error(exc: httpx.TransportError, counted: bool) -> DeliveryError:
    """What a failed exchange means: nothing sent (no connection), or maybe sent."""
    name = type(exc).__name__
    timeout = isinstance(exc, httpx.TimeoutException)
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError | httpx.PoolTimeout):
        return NetworkError(f"{'timeout' if timeout else 'connection failed'} ({name})")
    what = "timeout" if timeout else "connection broke"
    if counted:
        return Uncertain(f"{what} after the request left ({name}): it may have counted; not sent again")
    return NetworkError(f"{what} ({name})")


def int_header(headers: httpx.Headers, name: str) -> int | None:
    raw = headers.get(name)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None
