"""Accounts (`producers.accounts`): the settings, routing at enqueue, and isolation between
brands with real workers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from producers.accounts import DEFAULT
from producers.errors import ConfigurationError, InvalidJob
from producers.producer import Producer
from producers.settings import Settings, load_settings
from producers.store import keys
from worker.sandbox.server import Sandbox

from conftest import make_settings, queued_count, sandbox_requests, wait_for

ACCOUNTS = {"brand-a": {"token": "tok-brand-a-1234", "rate_limit": 50}, "brand-b": {"token": "tok-brand-b-5678"}}
EVENT = {"kind": "custom_event", "type": "Order Shipped", "user": {"email": "jane.doe@example.com"}}


def test_accounts_come_from_json_with_the_default_account_first():
    settings = Settings(attentive_api_token="tok-default", attentive_accounts=json.dumps(ACCOUNTS))
    assert list(settings.accounts) == [DEFAULT, "brand-a", "brand-b"]
    assert settings.accounts["brand-a"].token == SecretStr("tok-brand-a-1234")
    assert settings.accounts["brand-a"].rate_limit == 50
    assert settings.accounts[DEFAULT].token == SecretStr("tok-default")
    assert settings.queues == ("attentive", "attentive.brand-a", "attentive.brand-b")
    assert "tok-brand" not in repr(settings) and "tok-brand" not in repr(settings.accounts)


def test_accounts_can_come_from_a_mounted_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps(ACCOUNTS))
    monkeypatch.setenv("ATTENTIVE_ACCOUNTS_FILE", str(path))
    assert list(load_settings().accounts) == [DEFAULT, "brand-a", "brand-b"]


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("not json", "ATTENTIVE_ACCOUNTS: is not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"default": {"token": "x"}}', "'default' is the account of ATTENTIVE_API_TOKEN"),
        ('{"brand a": {"token": "x"}}', "account names must be"),
        ('{"brand-a": {"token": "tok-secret-value", "tokne": 1}}', "account brand-a: unknown field(s) tokne"),
        ('{"brand-a": {"token": 5}}', "account brand-a: token must be a string"),
        ('{"brand-a": {"token": "tok-secret-value", "rate_limit": -1}}', "account brand-a: rate_limit must be"),
    ],
)
def test_bad_accounts_stop_start_up_naming_the_rule_never_a_token(monkeypatch, value, rule):
    monkeypatch.setenv("ATTENTIVE_ACCOUNTS", value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert rule in str(caught.value)
    assert "tok-secret-value" not in str(caught.value)


def test_both_the_variable_and_the_file_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "a.json").write_text("{}")
    monkeypatch.setenv("ATTENTIVE_ACCOUNTS_FILE", str(tmp_path / "a.json"))
    monkeypatch.setenv("ATTENTIVE_ACCOUNTS", "{}")
    with pytest.raises(ConfigurationError, match="not both"):
        load_settings()


def test_an_unreadable_file_is_an_error_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTENTIVE_ACCOUNTS_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigurationError, match="ATTENTIVE_ACCOUNTS_FILE: cannot be read"):
        load_settings()


def test_an_unknown_account_is_refused_at_enqueue_naming_the_field(redis_server, redis_client):
    producer = Producer(make_settings(redis_server.url, attentive_accounts=json.dumps(ACCOUNTS)), redis_client)
    with pytest.raises(InvalidJob) as caught:
        producer.enqueue({**EVENT, "account": "brand-c"})
    assert str(caught.value) == "invalid job: account: is not an account in ATTENTIVE_ACCOUNTS"
    assert redis_client.dbsize() == 0


def test_each_account_s_jobs_go_on_its_own_queue(redis_server, redis_client):
    producer = Producer(make_settings(redis_server.url, attentive_accounts=json.dumps(ACCOUNTS)), redis_client)
    a = producer.enqueue({**EVENT, "account": "brand-a"})
    default = producer.enqueue(EVENT)
    named_default = producer.enqueue({**EVENT, "account": "default"})
    assert queued_count(redis_client, "attentive.brand-a") == 1 and queued_count(redis_client, "attentive") == 2
    assert redis_client.hget(keys.job(a), "account") == b"brand-a"
    assert redis_client.hget(keys.job(default), "account") == b"default"
    assert b'"account"' not in redis_client.hget(keys.job(named_default), "job"), "'default' is stored as no name"


def test_one_account_s_backlog_never_holds_up_another_s_jobs(redis_server, redis_client, start_worker):
    """Account A has 10,000 jobs queued at its limit (50/s); account B's 20 arrive later and
    are delivered within a few seconds; every request carries its own account's token."""
    with Sandbox(port=0, token=None, rate=1000) as sandbox:
        settings = make_settings(redis_server.url, sandbox.url, attentive_accounts=json.dumps(ACCOUNTS))
        producer = Producer(settings, redis_client)
        backlog = [{**EVENT, "account": "brand-a", "type": "A"}] * 500
        for _ in range(20):
            assert all(isinstance(r, str) for r in producer.enqueue_many(backlog))
        start_worker(settings_=settings, concurrency=4)
        wait_for(lambda: account_delivered(redis_client, "brand-a") >= 20, 60, "brand A to be sending")

        sent_at = time.monotonic()
        producer.enqueue_many([{**EVENT, "account": "brand-b", "type": "B"}] * 20)
        wait_for(lambda: account_delivered(redis_client, "brand-b") == 20, 30, "brand B's 20 jobs")
        b_latency = time.monotonic() - sent_at

        requests = sandbox_requests(sandbox)
    assert b_latency < 5, f"brand B waited {b_latency:.1f} s behind brand A's backlog"
    tokens: dict[str, set[str]] = {r["body"]["type"]: set() for r in requests}
    for r in requests:
        tokens[r["body"]["type"]].add(r["token_tag"])
    assert tokens["A"] == {tag("tok-brand-a-1234")} and tokens["B"] == {tag("tok-brand-b-5678")}
    assert [r["status"] for r in requests].count(429) == 0
    a_times = sorted(r["at"] for r in requests if r["body"]["type"] == "A")
    assert len(a_times) / (a_times[-1] - a_times[0] + 1) <= 50, "brand A stayed within its own limit"


def account_delivered(client: redis.Redis, account: str) -> int:
    return int(client.hget(keys.account_stats(account), "delivered") or 0)


def tag(token: str) -> str:
    from pydantic import SecretStr

    from worker.destinations.base import credential_tag

    return credential_tag(SecretStr(token))
