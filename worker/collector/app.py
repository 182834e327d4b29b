"""A collector that speaks the Segment HTTP Tracking API, so Segment's own client libraries,
pointed at it, send their events to Attentive through this relay. This module is the ASGI
application; `worker.collector.server` serves it (uvicorn) and `worker.collector.body`
reads request bodies.

    POST /v1/track | /v1/page | /v1/identify   one message
    POST /v1/batch                               {"batch": [message, ...]}
    OPTIONS on those paths                       204 (a CORS preflight for allowed origins)

What it accepts and answers (write keys and accounts, browsers and CORS, sizes, every status,
duplicates by messageId, connections) is specified once, in docs/segment-and-collector.md.
The contract this module keeps: a request is answered after its messages are queued in Redis
in one transaction, so an accepted message is never dropped; an invalid message is reported
by index, field and rule whatever it holds, and the valid ones of its request are queued.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import anyio
import redis

from producers import accounts
from producers.errors import ConfigurationError, InvalidJob, Problem
from producers.job import jsonvalues
from producers.prepared import PreparedJob
from producers.producer import Producer
from producers.segment import mapping as segment
from producers.store import keys
from worker.collector.asgi import Receive, Scope, Send, lifespan, respond
from worker.collector.body import MAX_BODY, BodyBudget, BodyError, read_body
from worker.collector.policy import Cors, FailureLimiter, WriteKeys, key_fingerprint, presented_key

log = logging.getLogger("attentive_relay.collector")
MAX_MESSAGE = 32 * 1024
PATHS = {"/v1/track": "track", "/v1/page": "page", "/v1/identify": "identify", "/v1/batch": None}
MAX_IN_PROGRESS = 64
"""Requests one process checks and queues at once (bodies read, waiting for or holding a
worker thread); more get 503 (clients retry). Bodies being received are bounded apart, by
bytes (`worker.collector.body.MAX_BUFFERED`), so slow senders do not crowd out the others."""
BODY_TIMEOUT_S = 30.0

Answer = tuple[int, dict[str, Any]]


class CollectorApp:
    """The ASGI application. Thread-safe state only: requests are handled on worker threads."""

    def __init__(
        self,
        producer: Producer,
        *,
        max_in_progress: int = MAX_IN_PROGRESS,
        body_timeout_s: float = BODY_TIMEOUT_S,
        limiter: FailureLimiter | None = None,
    ) -> None:
        """Raises `ConfigurationError` naming the setting when ``COLLECTOR_WRITE_KEYS`` has no key
        (every request would be refused), a misshapen entry, or an account not in ``ATTENTIVE_ACCOUNTS``."""
        self.producer = producer
        self.keys = WriteKeys(producer.settings.write_keys)
        if not len(self.keys):
            raise ConfigurationError("COLLECTOR_WRITE_KEYS is empty: the collector would refuse every request")
        unknown = sorted(self.keys.accounts - producer.settings.accounts.keys())
        if unknown:
            raise ConfigurationError(
                f"COLLECTOR_WRITE_KEYS names account(s) not in ATTENTIVE_ACCOUNTS: {', '.join(unknown)}"
            )
        self.cors = Cors(producer.settings.allowed_origins)
        self.limiter = limiter or FailureLimiter()
        self._limiter_lock = threading.Lock()
        self.max_in_progress = max_in_progress
        self.body_timeout_s = body_timeout_s
        self.in_progress = 0
        self.budget = BodyBudget()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        if scope["type"] != "http":
            return None
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        extra: list[tuple[bytes, bytes]] = []
        origin = headers.get("origin")
        if origin is not None:
            if not self.cors.allows(origin):
                return await respond(send, 403, {"success": False, "message": "origin not allowed"}, _VARY)
            extra = self.cors.headers(origin, preflight=scope["method"] == "OPTIONS")
        path = scope["path"]
        if path not in PATHS:
            return await respond(send, 404, {"success": False, "message": "unknown path"}, extra)
        if scope["method"] == "OPTIONS":
            return await respond(send, 204, None, [*extra, (b"allow", b"POST, OPTIONS")])
        if scope["method"] != "POST":
            payload = {"success": False, "message": "only POST"}
            return await respond(send, 405, payload, [*extra, (b"allow", b"POST, OPTIONS")])
        address = (scope.get("client") or ("unknown", 0))[0]
        wait = self.limiter.blocked_for(address)
        if wait > 0:
            payload = {"success": False, "message": "too many refused write keys, retry later"}
            return await respond(send, 429, payload, [*extra, (b"retry-after", b"%d" % (wait + 1))], close=True)
        try:
            with anyio.fail_after(self.body_timeout_s):
                raw = await read_body(receive, headers, self.budget)
        except BodyError as exc:
            extra = [*extra, (b"retry-after", b"1")] if exc.status == 503 else extra
            return await respond(send, exc.status, {"success": False, "message": str(exc)}, extra, close=True)
        except TimeoutError:
            payload = {"success": False, "message": "body not received in time"}
            return await respond(send, 408, payload, extra, close=True)
        try:
            if self.in_progress >= self.max_in_progress:
                payload = {"success": False, "message": "busy, retry"}
                return await respond(send, 503, payload, [*extra, (b"retry-after", b"1")])
            self.in_progress += 1
            try:
                status, payload = await anyio.to_thread.run_sync(self.handle, path, headers, raw, address)
            finally:
                self.in_progress -= 1
            return await respond(send, status, payload, extra)
        finally:
            self.budget.give(len(raw))

    def handle(self, path: str, headers: dict[str, str], raw: bytes, address: str) -> Answer:
        """Check, map and queue one request's body (blocking: run on a worker thread)."""
        try:
            # one hostile message (a 5,000-digit number, 2,000 levels of nesting) must not make
            # the whole batch unreadable: it is read, then refused on its own
            body = jsonvalues.loads(raw)
        except ValueError:
            return 400, {"success": False, "message": "body is not valid JSON"}
        if not isinstance(body, dict):
            return 400, {"success": False, "message": "body must be a JSON object"}
        key = presented_key(headers, body)
        account = self.keys.account_of(key)
        if account is None:
            with self._limiter_lock:
                blocked = self.limiter.failed(address)
            log.warning(
                "collector refused write key %s from %s%s",
                key_fingerprint(key) if key else "(none)",
                address,
                "; address blocked" if blocked else "",
            )
            return 401, {"success": False, "message": "unknown write key"}
        default_type = PATHS[path]
        if default_type is None:
            messages = body.get("batch")
            if not isinstance(messages, list):
                return 400, {"success": False, "message": "batch must be an array"}
        else:
            messages = [{**body, "type": body.get("type", default_type)}]
        return self._accept(messages, body.get("sentAt"), account)

    def _accept(self, messages: list[Any], sent_at: Any, account: str) -> Answer:
        """Queue the valid ``messages`` as jobs of ``account`` (the write key's)."""
        named = None if account == accounts.DEFAULT else account  # default-account jobs name none, as before
        prepared: list[PreparedJob] = []
        problems: list[dict[str, Any]] = []
        skipped: dict[str, int] = {}
        once: dict[str, list[str]] = {}  # messageId marker -> the ids of its jobs
        for index, message in enumerate(messages):
            try:
                if len(json.dumps(message)) > MAX_MESSAGE:
                    raise InvalidJob([Problem("", f"a message must be at most {MAX_MESSAGE} bytes")])
                if isinstance(message, dict) and sent_at and "sentAt" not in message:
                    message = {**message, "sentAt": sent_at}
                jobs = self.producer.prepare_segment(message, named)
                if isinstance(jobs, segment.Skip):
                    skipped[jobs.reason] = skipped.get(jobs.reason, 0) + 1
                    continue
                marker = _marker(message, account)
                if marker in once:  # the same message twice in one request
                    skipped["duplicate"] = skipped.get("duplicate", 0) + 1
                    continue
                if marker is not None:
                    once[marker] = [job.job_id for job in jobs]
                prepared.extend(jobs)
            except InvalidJob as err:
                problems += [{"index": index, "field": p.field, "rule": p.rule} for p in err.problems]
        try:
            duplicates = self.producer.push(prepared, skipped, once)
        except redis.RedisError as exc:
            log.error("collector cannot reach Redis (%s); answered 503", type(exc).__name__)
            return 503, {"success": False, "message": "queue unavailable, retry"}
        left_out = sum(len(once[m]) for m in duplicates)
        result = {"accepted": len(prepared) - left_out, "skipped": sum(skipped.values()) + len(duplicates)}
        if problems:
            return 400, {"success": False, **result, "problems": problems}
        return 200, {"success": True, **result}


_VARY = [(b"vary", b"Origin")]


def _marker(message: Any, account: str) -> str | None:
    """The dedupe marker of a message with a ``messageId`` (Segment's own dedupe key) sent for
    ``account``, else None.

    A client that retries a request (a browser that saw no CORS answer, a library whose
    request timed out) sends the same messageIds; Attentive's eCommerce calls have no
    ``externalEventId`` to tell a copy apart, so copies are left out here instead.

    Per account, as Segment dedupes per source: two brands' sites (their own keys, their own
    libraries) may well reuse a messageId, and one brand's message must not hide another's.
    The default account keeps the bare `keys.seen` marker it always had, so markers written
    before an upgrade still keep its duplicates out; another account's marker is that key
    with ``:ACCOUNT`` after the digest, which no bare marker can equal (the digest is fixed
    length) and which no two accounts share (account names hold no ``:``).
    """
    message_id = message.get("messageId") if isinstance(message, dict) else None
    if not isinstance(message_id, str) or not message_id.strip():
        return None
    marker = keys.seen(message_id)
    return marker if account == accounts.DEFAULT else f"{marker}:{account}"


def create_app() -> CollectorApp:
    """The app from the environment's settings: what each ``collect --workers N`` process runs."""
    from producers.settings import load_settings
    from producers.store.connection import from_settings
    from worker.ops import logs

    logs.configure()
    settings = load_settings()
    return CollectorApp(Producer(settings, from_settings(settings)))


__all__ = ["MAX_BODY", "MAX_MESSAGE", "PATHS", "CollectorApp", "create_app"]
