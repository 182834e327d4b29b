"""Sentry: real workers reporting to a local stand-in for Sentry's ingest endpoint.

Checks what is reported (a poison job as an error; one warning per dead-letter cause, not one
per job; nothing for expected outcomes) and that no phone number, email or token leaves.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from producers.producer import Producer
from producers.store import keys
from worker.counters import stats
from worker.ops import sentry
from worker.sandbox.httpserver import BackgroundHTTPServer

from conftest import add_fault, make_settings, wait_for

PHONE, EMAIL, TOKEN = "+14155552671", "leaky.person@example.com", "sekret-token-value-123"


class _Ingest(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    bodies: list[str]
    lock: threading.Lock

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            raw = gzip.decompress(raw)
        elif encoding == "deflate":
            raw = zlib.decompress(raw)
        elif encoding:
            raise AssertionError(f"unexpected Content-Encoding {encoding}")
        with self.lock:
            self.bodies.append(raw.decode("utf-8", "replace"))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


@pytest.fixture
def ingest() -> Iterator[BackgroundHTTPServer]:
    with BackgroundHTTPServer("127.0.0.1", 0, _Ingest, bodies=[], lock=threading.Lock()) as server:
        yield server


def events(server: BackgroundHTTPServer) -> list[dict]:
    """Every event item in the envelopes received so far."""
    handler = server.server.RequestHandlerClass
    with handler.lock:  # type: ignore[attr-defined]
        bodies = list(handler.bodies)  # type: ignore[attr-defined]
    found = []
    for body in bodies:
        for line in body.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and ("exception" in item or "message" in item or "logentry" in item):
                found.append(item)
    return found


def test_scrubbing_removes_contact_details_headers_and_task_arguments():
    event = {
        "message": f"failed for {EMAIL} / {PHONE}",
        "extra": {"celery-job": {"args": [PHONE]}},
        "request": {"headers": {"Authorization": f"Bearer {TOKEN}"}, "url": "https://x"},
        "exception": {"values": [{"value": f"phone (415) 555-2671 rejected, email {EMAIL}"}]},
    }
    cleaned = json.dumps(sentry.before_send(event, {}))
    for secret in (PHONE, EMAIL, "555-2671", TOKEN, "celery-job"):
        assert secret not in cleaned
    assert "failed for [redacted]" in cleaned


def test_worker_reports_a_crash_and_one_warning_per_cause_and_leaks_nothing(
    redis_server, redis_client, sandbox, start_worker, ingest
):
    settings = make_settings(
        redis_server.url,
        sandbox.url,
        attentive_max_attempts=2,
        attentive_api_token=TOKEN,
        attentive_accounts=json.dumps({"brand-a": {"token": TOKEN}}),
    )
    producer = Producer(settings, redis_client)
    sandbox.state.token = TOKEN
    add_fault(sandbox, status=401, type="Auth", times=3)
    add_fault(sandbox, status=400, type="Rejected", times=1)
    add_fault(sandbox, status=503, type="Down", times=4)
    user = {"phone": PHONE, "email": EMAIL}
    for type_ in ("Auth", "Auth", "Auth", "Rejected", "Down", "Poison"):
        # The refused token is brand-a's: that account is paused, the default one goes on.
        account = {"account": "brand-a"} if type_ == "Auth" else {}
        job_id = producer.enqueue(
            {"kind": "custom_event", "type": type_, "user": user, "properties": {"note": f"contact {EMAIL}"}, **account}
        )
        if type_ == "Poison":
            redis_client.hset(keys.job(job_id), "history", "{corrupt")
    dsn = f"http://publickey@127.0.0.1:{ingest.server.server_address[1]}/1"
    start_worker(concurrency=1, settings_=settings, SENTRY_DSN=dsn)
    wait_for(lambda: sum(stats(redis_client, settings)["dead_letter"].values()) == 3, 60, "three dead letters")
    wait_for(lambda: stats(redis_client, settings)["scheduled"] == 3, 60, "three jobs held, their account paused")
    wait_for(lambda: len(events(ingest)) >= 3, 30, "three Sentry events")
    time.sleep(2)  # anything else that was going to arrive
    found = events(ingest)
    messages = [e.get("message") or (e.get("logentry") or {}).get("message") for e in found]
    assert messages.count("deliveries are paused: unauthorized") == 1, messages
    assert messages.count("jobs are being dead-lettered: server_error") == 1, messages
    crashes = [e for e in found if "exception" in e]
    assert len(crashes) == 1 and crashes[0]["level"] == "error"
    assert not any("rejected" in (m or "") for m in messages)
    handler = ingest.server.RequestHandlerClass
    raw = "\n".join(handler.bodies)
    for secret in (PHONE, "4155552671", EMAIL, TOKEN):
        assert secret not in raw
