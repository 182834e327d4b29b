"""A collector that speaks the Segment HTTP Tracking API, so Segment's own client libraries,
pointed at it, send their events to Attentive through this relay.

    POST /v1/track | /v1/page | /v1/identify   one message
    POST /v1/batch                               {"batch": [message, ...]}

The write key comes as the HTTP Basic user (as Segment's libraries send it) or as
``writeKey`` in the body, and must be one of ``COLLECTOR_WRITE_KEYS``; anything else is 401.

Each request is answered after its messages are queued in Redis, in one transaction:
- 200 ``{"success": true, "accepted": n, "skipped": k}`` when every message was queued or
  skipped (skips are counted, see `producers.segment`);
- 400 with ``problems`` (message index, field, rule) when some messages were invalid, whatever
  they hold (NaN, Infinity, huge numbers, impossible times, lone surrogates: the producer
  refuses them all as `InvalidJob`); the valid ones of the request are still queued, and
  ``accepted`` says how many;
- 401 bad key, 404 unknown path, 413 body over 500 KB (or a message over 32 KB, Segment's
  limits), 503 when Redis cannot be reached (nothing was queued: the client retries).

An accepted message is never dropped: it is in Redis before the 200 goes out.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
from http.server import BaseHTTPRequestHandler
from typing import Any

import redis

from producers import jsonvalues, segment
from producers.errors import InvalidJob, Problem
from producers.producer import Producer
from worker.httpserver import BackgroundHTTPServer

log = logging.getLogger("attentive_relay.collector")
MAX_BODY = 500 * 1024
MAX_MESSAGE = 32 * 1024
PATHS = {"/v1/track": "track", "/v1/page": "page", "/v1/identify": "identify", "/v1/batch": None}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "attentive-relay-collector"
    producer: Producer
    write_keys: frozenset[str]

    def log_message(self, format: str, *args: Any) -> None:
        pass  # request lines carry nothing useful and logging them invites personal data

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _read(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self._send(413, {"success": False, "message": f"body must be at most {MAX_BODY} bytes"})
            self.close_connection = True
            return None
        raw = self.rfile.read(length)
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                with gzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
                    raw = gz.read(MAX_BODY + 1)
            except (OSError, EOFError):
                self._send(400, {"success": False, "message": "body is not valid gzip"})
                return None
            if len(raw) > MAX_BODY:
                self._send(413, {"success": False, "message": f"body must be at most {MAX_BODY} bytes"})
                return None
        return raw

    def _write_key(self, body: dict[str, Any]) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                return base64.b64decode(auth[6:], validate=True).decode().split(":", 1)[0]
            except (ValueError, UnicodeDecodeError):
                return None
        key = body.get("writeKey")
        return key if isinstance(key, str) else None

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] not in PATHS:
            self._read()
            return self._send(404, {"success": False, "message": "unknown path"})
        raw = self._read()
        if raw is None:
            return None
        try:
            # one hostile message (a 5,000-digit number, 2,000 levels of nesting) must not make
            # the whole batch unreadable: it is read, then refused on its own
            body = jsonvalues.loads(raw)
        except ValueError:
            return self._send(400, {"success": False, "message": "body is not valid JSON"})
        if not isinstance(body, dict):
            return self._send(400, {"success": False, "message": "body must be a JSON object"})
        if self._write_key(body) not in self.write_keys:
            return self._send(401, {"success": False, "message": "unknown write key"})
        default_type = PATHS[self.path.split("?", 1)[0]]
        if default_type is None:
            messages = body.get("batch")
            if not isinstance(messages, list):
                return self._send(400, {"success": False, "message": "batch must be an array"})
        else:
            messages = [{**body, "type": body.get("type", default_type)}]
        return self._accept(messages, body.get("sentAt"))

    def _accept(self, messages: list[Any], sent_at: Any) -> None:
        prepared: list[tuple[str, str, str]] = []
        problems: list[dict[str, Any]] = []
        skipped: dict[str, int] = {}
        for index, message in enumerate(messages):
            try:
                if len(json.dumps(message)) > MAX_MESSAGE:
                    raise InvalidJob([Problem("", f"a message must be at most {MAX_MESSAGE} bytes")])
                if isinstance(message, dict) and sent_at and "sentAt" not in message:
                    message = {**message, "sentAt": sent_at}
                jobs = self.producer.prepare_segment(message)
                if isinstance(jobs, segment.Skip):
                    skipped[jobs.reason] = skipped.get(jobs.reason, 0) + 1
                    continue
                prepared.extend(jobs)
            except InvalidJob as err:
                problems += [{"index": index, "field": p.field, "rule": p.rule} for p in err.problems]
        try:
            self.producer.push(prepared, skipped)
        except redis.RedisError as exc:
            log.error("collector cannot reach Redis (%s); answered 503", type(exc).__name__)
            return self._send(503, {"success": False, "message": "queue unavailable, retry"})
        result = {"accepted": len(prepared), "skipped": sum(skipped.values())}
        if problems:
            return self._send(400, {"success": False, **result, "problems": problems})
        return self._send(200, {"success": True, **result})


class Collector(BackgroundHTTPServer):
    """The HTTP server. ``with Collector(producer, port=0) as c: c.url`` runs it in a thread."""

    def __init__(self, producer: Producer, host: str = "127.0.0.1", port: int = 8788) -> None:
        if not producer.settings.write_keys:
            raise ValueError("COLLECTOR_WRITE_KEYS is empty: the collector would refuse every request")
        super().__init__(host, port, _Handler, producer=producer, write_keys=producer.settings.write_keys)
