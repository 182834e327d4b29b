"""A local stand-in for Attentive's REST API, for development, the tests, the demo and benchmarks.

It also plays Attentive's GraphQL API (`worker.sandbox.graphql`, ``POST /v1/graphql``), its
Privacy Request API (`worker.sandbox.privacy`, deletion requests) and Yotpo's custom-event
endpoint (`worker.sandbox.yotpo`), on the same server: point ATTENTIVE_BASE_URL and
YOTPO_BASE_URL at it.

It checks the Bearer token, validates bodies with the same rules the producers apply (400
with the problems listed), enforces per-endpoint-per-token limits with 429s and
``x-ratelimit-limit`` / ``x-ratelimit-remaining`` headers (a fixed one-second window, as
Attentive describes it), and can inject 5xx, latency and timeouts. Events older than the
freshness window are answered 200 and recorded as ``dropped_stale``, as Attentive does.

Control endpoints (the sandbox only listens where you tell it, 127.0.0.1 by default):

    GET  /__sandbox/requests   every request seen: path, status, body, time and ``token_tag``,
                               the credential it carried as `credential_tag` (a short hash,
                               never the token) (bodies hold personal data: needs the
                               sandbox's Bearer token when it has one)
    GET  /__sandbox/stats      counts by path and status
    POST /__sandbox/faults     {"status": 503, "times": 2, "type": "Order Shipped",
                                "retry_after": 1, "delay_ms": 0, "path": "/v1/events/custom"}
                               GraphQL errors inside a 200: {"graphql_code": "BAD_USER_INPUT",
                                "message": "...", "path": "/v1/graphql"}
    POST /__sandbox/config     {"rate": 150, "fail_rate": 0.1, "latency_ms": 100,
                                "yotpo_rate": 5, "yotpo_stores": {"STORE_ID": "TOKEN"},
                                "privacy_delay_s": 0}
    POST /__sandbox/reset      forget requests, faults and rate windows
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from producers.errors import InvalidJob
from producers.job import freshness
from producers.job.models import EVENT_PATHS, CustomAttributes
from producers.job.rules import normalize_phone
from producers.job.validation import parse_job
from worker.destinations.base import credential_tag
from worker.sandbox import graphql, privacy, yotpo
from worker.sandbox.httpserver import BackgroundHTTPServer
from worker.sandbox.state import Fault, SandboxState

log = logging.getLogger("attentive_relay.sandbox")
KIND_BY_PATH = {path: kind for kind, path in EVENT_PATHS.items()}
MAX_BODY = 1024 * 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "attentive-sandbox"
    state: SandboxState

    def log_message(self, format: str, *args: Any) -> None:
        pass  # request lines hold query strings with phone numbers: never print them

    def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the caller died or gave up (a timeout test, a killed worker)

    def _body(self) -> bytes | None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(413, {"status": 413, "message": "body too large"})
            self.close_connection = True
            return None
        return self.rfile.read(length) if length else b""

    def _bearer(self) -> str | None:
        """The Bearer token presented, right or wrong."""
        auth = self.headers.get("Authorization", "")
        return auth[7:].strip() or None if auth.startswith("Bearer ") else None

    def _token(self) -> str | None:
        """The Bearer token when it is the one the sandbox accepts."""
        token = self._bearer()
        s = self.state
        return token if token is None or s.token is None or token == s.token or token in s.more_tokens else None

    def _yotpo_token(self, query: str) -> str | None:
        params = parse_qs(query)
        found = self.headers.get("X-Yotpo-Token") or (params.get("access_token") or params.get("utoken") or [""])[0]
        return found.strip() or None

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        s = self.state
        if url.path == "/__sandbox/stats":
            with s.lock:
                counts = Counter(f"{r['path']} {r['status']}" for r in s.requests)
            return self._send(200, dict(counts))
        token = self._token()
        if token is None:
            return self._send(401, {"status": 401, "error": "Unauthorized"})
        if url.path == "/__sandbox/requests":
            with s.lock:
                return self._send(200, [dict(r) for r in s.requests])
        request = privacy.request_id_of(url.path)
        if request is not None:
            return self._answer_recorded(url.path, None, lambda: privacy.status(s, token, request))
        if url.path == "/v1/me":
            return self._send(200, {"applicationName": "attentive-relay sandbox", "companyName": "Sandbox"})
        if url.path == "/v1/attributes/custom":
            query = parse_qs(url.query)
            if len([k for k in ("phone", "email") if k in query]) != 1:
                return self._send(400, {"status": 400, "message": "exactly one of phone or email"})
            ident = (query.get("phone") or query.get("email"))[0]  # type: ignore[index]
            if "phone" in query:
                try:
                    ident = normalize_phone(ident, s.settings.attentive_default_region)
                except ValueError:
                    return self._send(400, {"status": 400, "message": "phone is not a valid phone number"})
            with s.lock:
                attrs = dict(s.attributes.get(ident, {}))
            return self._send(200, [{"name": k, "value": v} for k, v in attrs.items()])
        return self._send(404, {"status": 404, "error": "Not Found"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        raw = self._body()
        if raw is None:
            return None
        if url.path.startswith("/__sandbox/"):
            return self._control(url.path, raw)
        s = self.state
        store = yotpo.store_of(url.path)
        presented = self._yotpo_token(url.query) if store is not None else self._bearer()
        body = _json_or_none(raw)
        token = self._token()

        def answer() -> tuple[int, Any, dict[str, str], str]:
            if store is not None:
                return yotpo.answer(s, store, presented, body)
            if url.path == graphql.PATH:
                return graphql.answer(s, token, body)
            if url.path == privacy.DELETE_PATH and token is not None:
                return privacy.file(s, token, body)
            return self._answer(token, KIND_BY_PATH.get(url.path), url.path, raw)

        return self._answer_recorded(url.path, body, answer, presented)

    def _answer_recorded(
        self,
        path: str,
        body: Any,
        answer: Callable[[], tuple[int, Any, dict[str, str], str]],
        presented: str | None = None,
    ) -> None:
        """Record the request, answer it with ``answer()``, record the answer."""
        s = self.state
        presented = presented if presented is not None else self._bearer()
        # Recorded on arrival, so a request whose sender dies before the answer is still seen.
        record = {
            "path": path,
            "status": None,
            "note": "in progress",
            "at": time.time(),
            "body": body,
            "token_tag": credential_tag(presented) if presented else None,
        }
        with s.lock:
            s.requests.append(record)
        status, payload, headers, note = answer()
        with s.lock:
            record.update(status=status, note=note, done=time.time())
        self._send(status, payload, headers)

    def _answer(
        self, token: str | None, kind: str | None, path: str, raw: bytes
    ) -> tuple[int, Any, dict[str, str], str]:
        s = self.state
        if token is None:
            return 401, {"status": 401, "error": "Unauthorized"}, {}, "bad token"
        if kind is None:
            return 404, {"status": 404, "error": "Not Found", "path": path}, {}, "no such endpoint"
        allowed, limit, remaining = s.take(token, path)
        headers = {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": str(remaining)}
        if not allowed:
            return 429, {"status": 429, "error": "Too Many Requests"}, headers, "rate limited"
        body = _json_or_none(raw)
        if not isinstance(body, dict):
            return 400, {"status": 400, "error": "Bad Request", "message": "body must be a JSON object"}, headers, ""
        if s.latency_ms:
            time.sleep(s.latency_ms / 1000)
        fault = s.fault_for(path, body)
        if fault is not None:
            return fault.answer(headers)
        if s.fail_rate and random.random() < s.fail_rate:
            return 503, {"status": 503, "error": "Service Unavailable"}, headers, "random failure"
        now = datetime.now(UTC)
        try:
            job = parse_job({**body, "kind": kind}, s.settings, now, at_enqueue=False)
        except InvalidJob as err:
            return 400, {"status": 400, "error": "Bad Request", "message": str(err), "path": path}, headers, "invalid"
        if freshness.is_stale(getattr(job, "occurredAt", None), now, s.settings.freshness_s):
            return 200, None, headers, "dropped_stale"
        if isinstance(job, CustomAttributes):
            with s.lock:
                for ident in (job.user.phone, job.user.email):
                    if ident:
                        s.attributes.setdefault(ident, {}).update(body["properties"])
        return (202 if kind == "identity" else 200), None, headers, "accepted"

    def _control(self, path: str, raw: bytes) -> None:
        s = self.state
        body = _json_or_none(raw) or {}
        if not isinstance(body, dict):
            return self._send(400, {"message": "JSON object expected"})
        with s.lock:
            if path == "/__sandbox/reset":
                s.requests.clear()
                s.faults.clear()
                s.windows.clear()
                s.attributes.clear()
                s.yotpo_events.clear()
                s.privacy.clear()
            elif path == "/__sandbox/faults":
                try:
                    s.faults.append(Fault(**body))
                except TypeError as exc:
                    return self._send(400, {"message": str(exc)})
            elif path == "/__sandbox/config":
                s.rate = int(body.get("rate", s.rate))
                s.fail_rate = float(body.get("fail_rate", s.fail_rate))
                s.latency_ms = int(body.get("latency_ms", s.latency_ms))
                s.yotpo_rate = int(body.get("yotpo_rate", s.yotpo_rate))
                s.yotpo_stores = dict(body.get("yotpo_stores", s.yotpo_stores))
                s.privacy_delay_s = float(body.get("privacy_delay_s", s.privacy_delay_s))
            else:
                return self._send(404, {"message": "unknown control endpoint"})
        return self._send(200, {"ok": True})


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


class Sandbox(BackgroundHTTPServer):
    """The server. ``with Sandbox(port=0) as sb: sb.url`` runs it in a background thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8787,
        *,
        token: str | None = None,
        more_tokens: tuple[str, ...] = (),
        rate: int = 150,
        fail_rate: float = 0.0,
        latency_ms: int = 0,
        yotpo_stores: dict[str, str] | None = None,
    ) -> None:
        self.state = SandboxState(
            token=token,
            more_tokens=frozenset(more_tokens),
            rate=rate,
            fail_rate=fail_rate,
            latency_ms=latency_ms,
            yotpo_stores=dict(yotpo_stores or {}),
        )
        super().__init__(host, port, _Handler, state=self.state)
