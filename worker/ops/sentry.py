"""Sentry for the worker: on with ``SENTRY_DSN``, and nothing personal ever leaves.

- Initialised in Celery's ``celeryd_init`` signal (before the pool forks, so every pool process
  inherits it), with the Celery integration, ``send_default_pii=False`` and no frame local
  variables. Log records become breadcrumbs only, never events: expected outcomes (a retry, a
  429, a ``rejected`` dead letter) are not errors.
- What *is* reported: a poison job (``crashed``) as an error, and dead-lettering for
  ``unauthorized`` or exhausted retries as one warning per cause per process per hour,
  not one per job (`report_dead_letter`).
- ``before_send`` / ``before_breadcrumb`` scrub every string in the event: email addresses,
  phone numbers and the API token become ``[redacted]``, and HTTP headers, request bodies,
  task arguments and ``extra`` data are dropped.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any

from producers.settings import Settings

REDACTED = "[redacted]"
_EMAIL = re.compile(r"[^\s@\"'<>,;:()]+@[^\s@\"'<>,;:()]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"(?<![\w.])\+?\d[\d\s().-]{6,}\d(?![\w.])")
#: Dead-letter reasons worth a warning: someone has to act (fix the token, look at an outage).
WARN_REASONS = frozenset({"unauthorized", "rate_limited", "server_error", "network_error", "worker_lost"})
WARN_EVERY_S = 3600.0

_token: str | None = None
_last_warned: dict[str, float] = {}
_lock = threading.Lock()


def scrub_text(text: str) -> str:
    if _token and _token in text:
        text = text.replace(_token, REDACTED)
    return _PHONE.sub(REDACTED, _EMAIL.sub(REDACTED, text))


def scrub(value: Any) -> Any:
    """Every string in a nested structure, scrubbed."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    event.pop("extra", None)  # the Celery integration puts task args here
    event.pop("user", None)
    request = event.get("request")
    if isinstance(request, dict):
        for key in ("headers", "data", "cookies", "query_string", "env"):
            request.pop(key, None)
    return scrub(event)


def before_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    crumb.pop("data", None)
    return scrub(crumb)


def init(settings: Settings) -> bool:
    """Start Sentry when ``SENTRY_DSN`` is set. Returns whether it did."""
    dsn = os.environ.get("SENTRY_DSN")
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration

    global _token
    _token = settings.attentive_api_token.get_secret_value() if settings.attentive_api_token else None
    sentry_sdk.init(
        dsn=dsn,
        integrations=[CeleryIntegration(), LoggingIntegration(event_level=None)],
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="never",
        before_send=before_send,  # type: ignore[arg-type]
        before_breadcrumb=before_breadcrumb,
        release=os.environ.get("SENTRY_RELEASE"),
        environment=os.environ.get("SENTRY_ENVIRONMENT"),
    )
    return True


def report_crash(exc: BaseException, job_id: str) -> None:
    """A poison job: an error event, with job id and traceback, scrubbed like everything else."""
    import sentry_sdk

    with sentry_sdk.new_scope() as scope:
        scope.set_tag("job_id", job_id)
        sentry_sdk.capture_exception(exc)


def report_dead_letter(reason: str, kind: str) -> None:
    """One warning per cause per process per hour, for the dead letters someone must act on."""
    if reason in WARN_REASONS:
        _warn_once(reason, f"jobs are being dead-lettered: {reason}", {"reason": reason, "kind": kind})


def report_pause(reason: str, destination: str) -> None:
    """An account paused by a 401/403 (`worker.pause`): someone must fix its token. One
    warning per cause per process per hour."""
    _warn_once(f"paused:{reason}", f"deliveries are paused: {reason}", {"reason": reason, "destination": destination})


def _warn_once(cause: str, message: str, tags: dict[str, str]) -> None:
    now = time.monotonic()
    with _lock:
        if now - _last_warned.get(cause, -WARN_EVERY_S) < WARN_EVERY_S:
            return
        _last_warned[cause] = now
    import sentry_sdk

    with sentry_sdk.new_scope() as scope:
        for name, value in tags.items():
            scope.set_tag(name, value)
        sentry_sdk.capture_message(message, level="warning")
