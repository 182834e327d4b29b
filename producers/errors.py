"""Every exception attentive-relay raises, and the decision each one stands for.

The tree::

    RelayError
    ├── InvalidJob (also ValueError)   a job breaks a rule            -> dead-letter "invalid"
    ├── ConfigurationError (also ValueError)  a setting cannot work -> raised to the operator
    └── DeliveryError                  one delivery attempt failed
        ├── TransientError             may heal: retry while attempts remain
        │   ├── RateLimited            429                           -> "rate_limited"
        │   ├── ServerError            5xx                           -> "server_error"
        │   ├── NetworkError           timeout, connection failure   -> "network_error"
        │   └── WorkerLost             the worker died mid-delivery  -> "worker_lost"
        └── PermanentError             will not heal by waiting: dead-letter now
            ├── Rejected               400, 404, 413, 422, other 4xx -> "rejected"
            ├── Unauthorized           401, 403                      -> "unauthorized"
            ├── Stale                  older than the freshness window -> "stale"
            ├── Uncertain              no answer after the request left, for a kind
            │                          that a second send counts twice -> "uncertain"
            └── Crashed                the worker raised on this job -> "crashed"

Each leaf carries ``reason`` (the dead-letter reason) and ``retryable``. The retry policy
(`worker.policy.decide`) reads only those two, so the mapping from failure to decision is
one-to-one and lives here.

Messages never contain personal data or the API token: they name fields, rules, HTTP
statuses and error types, never the values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


class RelayError(Exception):
    """Root of every attentive-relay exception."""

    reason: ClassVar[str] = "error"
    retryable: ClassVar[bool] = False


class ConfigurationError(RelayError, ValueError):
    """Settings that cannot work (for example delivering without a token). The message names
    the setting (the environment variable) and the rule, never the value: settings hold secrets.

    Every bad setting raises this, whichever module checks it. It is also a ``ValueError`` so
    that a check run inside a pydantic validator of `producers.settings.Settings` becomes part of
    its ``ValidationError`` (which `producers.settings.load_settings` turns back into one
    ConfigurationError naming every bad variable).
    """


@dataclass(frozen=True)
class Problem:
    """One broken rule: the field path (``user.phone``, ``items[0].price``) and the rule."""

    field: str
    rule: str

    def __str__(self) -> str:
        return f"{self.field}: {self.rule}" if self.field else self.rule


class InvalidJob(RelayError, ValueError):
    """A job that breaks one or more rules. ``problems`` lists every one of them."""

    reason = "invalid"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("invalid job: " + "; ".join(str(p) for p in problems))


class DeliveryError(RelayError):
    """One delivery attempt did not end in a 2xx.

    ``status`` is the HTTP status when there was a response, ``body`` Attentive's
    response text (kept for the dead-letter entry, never logged).
    """

    def __init__(self, detail: str, *, status: int | None = None, body: str = "") -> None:
        self.detail = detail
        self.status = status
        self.body = body
        super().__init__(detail)


class TransientError(DeliveryError):
    retryable = True


class RateLimited(TransientError):
    reason = "rate_limited"

    def __init__(
        self, detail: str, *, status: int | None = 429, body: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(detail, status=status, body=body)
        self.retry_after = retry_after


class ServerError(TransientError):
    reason = "server_error"


class NetworkError(TransientError):
    reason = "network_error"


class WorkerLost(TransientError):
    reason = "worker_lost"


class PermanentError(DeliveryError):
    retryable = False


class Rejected(PermanentError):
    reason = "rejected"


class Unauthorized(PermanentError):
    reason = "unauthorized"


class Stale(PermanentError):
    reason = "stale"


class Uncertain(PermanentError):
    """The request left but no answer came (a timeout or a connection broken mid-exchange),
    for a kind Attentive takes without an ``externalEventId`` (`producers.job.models.COUNTED_KINDS`):
    it may have counted, and a second send would count the order twice. Dead-lettered, never
    sent again by itself: an operator checks and replays. Kinds with an event id, and every
    failure before the request left, are a retried `NetworkError` instead."""

    reason = "uncertain"


class Crashed(PermanentError):
    reason = "crashed"


#: Every dead-letter reason, in the order `stats` and the docs list them.
REASONS: tuple[str, ...] = (
    InvalidJob.reason,
    Stale.reason,
    Rejected.reason,
    Unauthorized.reason,
    RateLimited.reason,
    ServerError.reason,
    NetworkError.reason,
    Uncertain.reason,
    WorkerLost.reason,
    Crashed.reason,
)
