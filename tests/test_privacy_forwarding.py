"""Forwarding an erasure to Attentive: deletion requests filed per account with its own token,
retried like deliveries, checked until processed, listed without the person's phone or email.

The unit tests build requests and classify answers through ``httpx.MockTransport``; the others
use the real sandbox, Redis and, for the scheduled check, a real ``celery worker``.
"""

from __future__ import annotations

import json

import httpx
import pytest
import redis
from test_erasure import erase_cli as cli
from test_erasure import everything_in

from producers.accounts import Account
from producers.producer import Producer
from producers.settings import Settings
from producers.store import keys
from worker.counters import stats
from worker.destinations.base import credential_tag
from worker.privacy.api import DELETE_PATH, STATUS_PATH, PrivacyApi, delete_body
from worker.privacy.forwarder import Forwarder, forwarder_for, person_of
from worker.privacy.store import FAILED, FILED, PENDING, PROCESSED, RequestStore
from worker.ratelimit import RateLimiter

from conftest import TOKEN, add_fault, make_settings, wait_for

EMAIL = "Forget.Me@Example.com"
PHONE = "+14155552671"
B_TOKEN = "brand-b-token"
ACCOUNT = Account("default", token=None)


def _api(handler, **overrides) -> tuple[PrivacyApi, Account]:
    settings = make_settings("redis://127.0.0.1:9/0", "https://attentive.test", **overrides)
    return PrivacyApi(settings, httpx.MockTransport(handler)), settings.accounts["default"]


def two_accounts(redis_url: str, sandbox_url: str, **overrides) -> Settings:
    accounts = json.dumps({"brand-b": {"token": B_TOKEN}, "yotpo-only": {"yotpo_store_id": "s1"}})
    return make_settings(redis_url, sandbox_url, attentive_accounts=accounts, **overrides)


def test_the_body_names_the_person_by_email_or_phone():
    assert delete_body("a@example.com", "m") == {"subjectEmail": "a@example.com", "requestMsg": "m"}
    assert delete_body(PHONE, "m") == {"subjectPhone": PHONE, "requestMsg": "m"}


def test_filing_sends_the_account_token_and_reads_the_request_id():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "dr-1"})

    api, account = _api(handler)
    filed = api.file(account, "a@example.com", "audit")
    assert filed.outcome.error is None and filed.request_id == "dr-1"
    assert seen[0].url.path == DELETE_PATH and seen[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(seen[0].content) == {"subjectEmail": "a@example.com", "requestMsg": "audit"}


@pytest.mark.parametrize(
    ("status", "body", "reason", "retryable"),
    [
        (429, {}, "rate_limited", True),
        (500, {}, "server_error", True),
        (503, {}, "server_error", True),
        (400, {"message": "bad"}, "rejected", False),
        (404, {}, "rejected", False),
        (401, {}, "unauthorized", False),
        (200, {"ok": True}, "rejected", False),  # a 2xx without an id cannot be checked: shown, not assumed
    ],
)
def test_filing_outcomes_are_classified_as_deliveries_are(status, body, reason, retryable):
    api, account = _api(lambda _: httpx.Response(status, json=body))
    error = api.file(account, PHONE, "m").outcome.error
    assert error is not None and error.reason == reason and error.retryable is retryable
    assert PHONE not in str(error) and TOKEN not in str(error)


def test_a_network_failure_is_retried_even_after_the_request_left():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    api, account = _api(handler)
    error = api.file(account, PHONE, "m").outcome.error
    assert error is not None and error.reason == "network_error" and error.retryable, "a second request is harmless"


def test_checking_reads_processed_and_escapes_the_id():
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path.decode())
        done = request.url.raw_path.endswith(b"done")
        return httpx.Response(
            200, json={"id": "x", "processed": done, "processedAt": "2026-01-01T00:00:00Z" if done else None}
        )

    api, account = _api(handler)
    assert api.check(account, "done").processed
    assert not api.check(account, "a/b?not").processed
    assert paths == [STATUS_PATH.format(id="done"), STATUS_PATH.format(id="a%2Fb%3Fnot")]


def test_an_account_without_a_token_is_never_called():
    api, _ = _api(lambda _: pytest.fail("no call without a token"))
    error = api.file(ACCOUNT, PHONE, "m").outcome.error
    assert error is not None and error.reason == "unauthorized" and "ATTENTIVE_API_TOKEN" in str(error)


def _forwarder(settings: Settings, client: redis.Redis) -> Forwarder:
    return Forwarder(settings, RequestStore(client), PrivacyApi(settings), RateLimiter(client, 1.0), rand=lambda: 0.0)


def test_the_sandbox_plays_both_endpoints_per_token(sandbox):
    sandbox.state.more_tokens = frozenset({B_TOKEN})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    filed = httpx.post(f"{sandbox.url}{DELETE_PATH}", json={"subjectEmail": "a@example.com"}, headers=auth)
    assert filed.status_code == 200
    request = filed.json()["id"]
    assert httpx.post(f"{sandbox.url}{DELETE_PATH}", json={"requestMsg": "x"}, headers=auth).status_code == 400
    assert httpx.post(f"{sandbox.url}{DELETE_PATH}", json={"subjectEmail": "a@x.org"}).status_code == 401
    status = httpx.get(f"{sandbox.url}{STATUS_PATH.format(id=request)}", headers=auth).json()
    assert status["processed"] is True and status["processedAt"]
    other = httpx.get(f"{sandbox.url}{STATUS_PATH.format(id=request)}", headers={"Authorization": f"Bearer {B_TOKEN}"})
    assert other.status_code == 404, "another account's token does not see the request"
    httpx.post(f"{sandbox.url}/__sandbox/config", json={"privacy_delay_s": 60}).raise_for_status()
    assert httpx.get(f"{sandbox.url}{STATUS_PATH.format(id=request)}", headers=auth).json()["processed"] is False
    add_fault(sandbox, status=500, path=STATUS_PATH)
    assert httpx.get(f"{sandbox.url}{STATUS_PATH.format(id=request)}", headers=auth).status_code == 500
    assert sandbox.state.privacy[request]["token_tag"] == credential_tag(TOKEN)


def test_a_request_that_keeps_failing_ends_failed_visible_and_forgets_the_value(redis_server, redis_client, sandbox):
    settings = make_settings(redis_server.url, sandbox.url, attentive_max_attempts=2, attentive_backoff_base_s=0.01)
    add_fault(sandbox, status=503, times=2, path=DELETE_PATH)
    forwarder = _forwarder(settings, redis_client)
    person = person_of(redis_client, settings, PHONE)
    [item] = forwarder.forward(person, PHONE, ["default"])
    assert item["status"] == PENDING and PHONE in everything_in(redis_client), "kept only until filed or failed"
    wait_for(lambda: forwarder.run_due() or None, 2, "the retry")
    [request] = forwarder.store.list(10)
    assert request.state == FAILED and request.reason == "server_error" and "2 attempts" in (request.detail or "")
    assert PHONE not in everything_in(redis_client)
    privacy = stats(redis_client, settings)["privacy"]
    assert privacy == {"filed": 0, "processed": 0, "retries": 1, "failed": {"server_error": 1}, "open": 0}


def test_a_rejected_request_fails_at_once_and_a_processed_one_leaves_nothing_due(redis_server, redis_client, sandbox):
    settings = make_settings(redis_server.url, sandbox.url, attentive_privacy_poll_s=0.1)
    forwarder = _forwarder(settings, redis_client)
    add_fault(sandbox, status=400, times=1, path=DELETE_PATH)
    [rejected] = forwarder.forward("p1", "a@example.com", ["default"])
    assert rejected == {"account": "default", "status": FAILED, "request_id": None, "reason": "rejected"}
    [filed] = forwarder.forward("p2", "b@example.com", ["default"])
    assert filed["status"] == FILED and str(filed["request_id"]).startswith("dr-")
    wait_for(lambda: forwarder.run_due() or None, 2, "the check")
    states = {r.person: r for r in forwarder.store.list(10)}
    assert states["p2"].state == PROCESSED and states["p2"].processed_ms and not forwarder.store.open()
    assert "@example.com" not in everything_in(redis_client)


def test_accounts_without_an_attentive_token_or_not_configured_are_skipped_and_said(
    redis_server, redis_client, sandbox
):
    settings = two_accounts(redis_server.url, sandbox.url)
    result = _forwarder(settings, redis_client).forward("p", PHONE, ["yotpo-only", "gone"])
    assert [(r["account"], r["status"]) for r in result] == [("yotpo-only", "skipped"), ("gone", "skipped")]
    assert "ATTENTIVE_ACCOUNTS yotpo-only.token is not set" in str(result[0]["reason"])
    assert not redis_client.exists(keys.PRIVACY_REQUESTS)


def test_erase_forwards_to_every_account_with_its_own_token_and_workers_finish(
    redis_server, redis_client, sandbox, start_worker
):
    """The whole path: erase files for two accounts (one meets a 429 and is left pending), a real
    worker retries it and checks both until processed; --status shows them, never the address."""
    sandbox.state.more_tokens = frozenset({B_TOKEN})
    settings = two_accounts(redis_server.url, sandbox.url, attentive_privacy_poll_s=0.3)
    producer = Producer(settings, redis_client)
    for account in ("default", "brand-b"):
        producer.enqueue({"kind": "custom_event", "type": "T", "user": {"email": EMAIL}, "account": account})
    producer.enqueue({"kind": "custom_event", "type": "T", "user": {"email": "someone.else@example.com"}})
    add_fault(sandbox, status=429, times=1, path=DELETE_PATH)

    done = cli(settings, "--email", "-", "--json", stdin=EMAIL + "\n")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["jobs"], out["dead_letters"]) == (2, 0)
    by_account = {f["account"]: f for f in out["forwarded"]}
    assert by_account["brand-b"]["status"] == PENDING, "the 429 (brand-b sorts first) is left to the workers"
    assert by_account["default"]["status"] == FILED and by_account["default"]["request_id"]

    start_worker(settings_=settings)

    def all_processed() -> list[dict] | None:
        status = cli(settings, "--status", "--json")
        rows = json.loads(status.stdout)
        return rows if len(rows) == 2 and all(r["state"] == PROCESSED for r in rows) else None

    rows = wait_for(all_processed, 15, "both requests processed", interval=0.3)
    assert {r["account"] for r in rows} == {"default", "brand-b"}
    assert len({r["person"] for r in rows}) == 1 and all(r["filed"] and r["processed"] for r in rows)
    listing = json.dumps(rows) + cli(settings, "--status").stdout
    assert EMAIL.lower() not in listing.lower() and "forget" not in listing.lower()
    assert EMAIL.lower() not in everything_in(redis_client).lower()

    posts = [r for r in sandbox.state.requests if r["path"] == DELETE_PATH]
    assert [r["status"] for r in posts].count(429) == 1 and [r["status"] for r in posts].count(200) == 2
    assert {r["token_tag"] for r in posts if r["status"] == 200} == {credential_tag(TOKEN), credential_tag(B_TOKEN)}
    assert all(
        r["body"]["subjectEmail"] == EMAIL.lower() and "attentive-relay" in r["body"]["requestMsg"] for r in posts
    )
    mine = cli(settings, "--status", "--json", "--email", EMAIL)
    assert len(json.loads(mine.stdout)) == 2
    assert json.loads(cli(settings, "--status", "--json", "--email", "someone.else@example.com").stdout) == []
    privacy = stats(redis_client, settings)["privacy"]
    assert (privacy["filed"], privacy["processed"], privacy["open"]) == (2, 2, 0) and privacy["retries"] >= 1


def test_no_forward_and_unknown_accounts(redis_server, redis_client, sandbox):
    settings = make_settings(redis_server.url, sandbox.url)
    Producer(settings, redis_client).enqueue({"kind": "custom_event", "type": "T", "user": {"phone": PHONE}})
    quiet = cli(settings, "--phone", PHONE, "--no-forward", "--json")
    assert quiet.returncode == 0 and json.loads(quiet.stdout) == {"jobs": 1, "dead_letters": 0, "forwarded": []}
    assert not sandbox.state.privacy
    unknown = cli(settings, "--phone", PHONE, "--account", "nope")
    assert unknown.returncode == 1 and "nope is not in ATTENTIVE_ACCOUNTS" in unknown.stderr
    nothing = cli(settings, "--phone", PHONE)
    assert nothing.returncode == 0 and "--account NAME" in nothing.stderr, "no known account is said, not silent"
    named = cli(settings, "--phone", PHONE, "--account", "default", "--json")
    assert named.returncode == 0 and json.loads(named.stdout)["forwarded"][0]["status"] == FILED
    assert next(r["body"] for r in sandbox.state.privacy.values())["subjectPhone"] == PHONE
    assert PHONE not in everything_in(redis_client)


def test_forwarder_for_uses_the_settings(redis_server, redis_client):
    forwarder = forwarder_for(make_settings(redis_server.url), redis_client)
    assert forwarder.store.open() == 0 and forwarder.api.settings.attentive_base_url == "http://127.0.0.1:9"
