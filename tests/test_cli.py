"""The ``attentive-relay`` command as a user runs it: a real process, a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from pydantic import SecretStr

from producers.producer import Producer
from producers.store import keys
from producers.store.message import ticket_for

from conftest import TOKEN, add_fault, delivery_for, make_settings, queued_count, sandbox_requests

GOOD = {"kind": "custom_event", "type": "Order Shipped", "user": {"phone": "(415) 555-2671"}}


def relay(args: list[str], settings, stdin: str | None = None, **env_: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": settings.redis_url.get_secret_value(), "NO_COLOR": "1", "COLUMNS": "200", **env_}
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_enqueue_ndjson_reports_invalid_lines_and_queues_the_rest(settings, redis_client, tmp_path: Path):
    lines = [json.dumps(GOOD), "", "{not json", json.dumps({**GOOD, "type": "Bad(Type)"}), json.dumps(GOOD)]
    source = tmp_path / "jobs.ndjson"
    source.write_text("\n".join(lines) + "\n")
    result = relay(["enqueue", str(source), "--json"], settings)
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"enqueued": 2, "invalid": 2}
    assert "line 3: invalid job: not valid JSON" in result.stderr
    assert "line 4: invalid job: type: must not contain" in result.stderr
    assert queued_count(redis_client, "attentive") == 2


def test_enqueue_from_stdin_all_valid_exits_zero(settings, redis_client):
    result = relay(["enqueue", "-"], settings, stdin=json.dumps(GOOD) + "\n")
    assert result.returncode == 0 and "enqueued 1, invalid 0" in result.stdout


def test_stats_json_has_the_contract_keys(settings, producer):
    producer.enqueue(GOOD)
    result = relay(["stats", "--json"], settings)
    data = json.loads(result.stdout)
    assert {"enqueued", "delivered", "retries", "dead_letter", "queued", "scheduled"} <= data.keys()
    assert data["enqueued"] == 1 and data["queued"] == 1 and data["dead_letter"]["rejected"] == 0


ACCOUNTS = json.dumps({"brand-a": {"token": TOKEN}, "brand-b": {"token": TOKEN}})


def test_stats_break_counters_down_by_account(settings, redis_client, sandbox):
    settings = make_settings(settings.redis_url.get_secret_value(), sandbox.url, attentive_accounts=ACCOUNTS)
    producer = Producer(settings, redis_client)
    delivery = delivery_for(settings, redis_client)
    a1, a2, b = (producer.enqueue({**GOOD, "account": n}) for n in ("brand-a", "brand-a", "brand-b"))
    producer.enqueue(GOOD)
    assert delivery.run(a1, ticket_for(a1, 0)) == "delivered"
    add_fault(sandbox, status=400, times=1)
    assert delivery.run(a2, ticket_for(a2, 0)) == "dead:rejected"
    add_fault(sandbox, status=503, times=1)
    assert delivery.run(b, ticket_for(b, 0)).startswith("retry")
    redis_client.hset(keys.account_stats("gone-brand"), "delivered", 7)  # an account no longer in the settings
    redis_client.zadd(keys.WAITING, {"some-job": 1})
    data = json.loads(relay(["stats", "--json"], settings, ATTENTIVE_ACCOUNTS=ACCOUNTS).stdout)
    accounts = data["accounts"]
    assert list(accounts) == ["default", "brand-a", "brand-b", "gone-brand"]
    assert accounts["default"] == {
        "delivered": 0,
        "dead_letter": accounts["default"]["dead_letter"],
        "queued": 1,
        "scheduled": 0,
        "oldest_queued_s": accounts["default"]["oldest_queued_s"],
        "served": True,
    }
    assert accounts["brand-a"]["delivered"] == 1 and accounts["brand-a"]["dead_letter"]["rejected"] == 1
    assert accounts["brand-a"]["queued"] == 0, "both ended (their messages, run by hand, stay on the queue)"
    assert accounts["brand-b"]["scheduled"] == 1 and accounts["brand-b"]["queued"] == 0
    assert set(accounts["brand-b"]["dead_letter"]) >= {"rejected", "stale"}
    assert sum(accounts["brand-b"]["dead_letter"].values()) == 0
    assert accounts["gone-brand"] == {
        "delivered": 7,
        "dead_letter": accounts["gone-brand"]["dead_letter"],
        "queued": 0,
        "scheduled": 0,
        "oldest_queued_s": 0.0,
        "served": False,
    }
    assert data["queued"] == 1 and data["scheduled"] == 1 and data["waiting"] == 1
    assert data["queued_messages"] == 4
    assert data["delivered"] == 1 and data["dead_letter"]["rejected"] == 1
    human = relay(["stats"], settings, ATTENTIVE_ACCOUNTS=ACCOUNTS)
    assert human.returncode == 0 and "brand-b" in human.stdout and "rejected 1" in human.stdout


def test_dlq_list_show_replay_purge(settings, producer, redis_client, sandbox):
    add_fault(sandbox, status=400, times=2)
    delivery = delivery_for(settings, redis_client)
    ids = [producer.enqueue(GOOD) for _ in range(2)]
    for job_id in ids:
        assert delivery.run(job_id, ticket_for(job_id, 0)) == "dead:rejected"

    listed = json.loads(relay(["dlq", "list", "--json", "--reason", "rejected"], settings).stdout)
    assert sorted(e["job_id"] for e in listed) == sorted(ids)
    assert all("+14155552671" not in json.dumps(e) for e in listed), "list shows no personal data"

    shown = relay(["dlq", "show", ids[0]], settings)
    assert json.loads(shown.stdout)["job"]["user"]["phone"] == "+14155552671"
    assert relay(["dlq", "show", "nope"], settings).returncode == 1

    replayed = relay(["dlq", "replay", ids[0], "--json"], settings)
    assert json.loads(replayed.stdout) == {"replayed": 1, "stale": 0, "missing": 0, "unserved": 0}
    assert relay(["dlq", "replay"], settings).returncode == 2, "ids or --all is required"

    purged = relay(["dlq", "purge", "--all", "--json"], settings)
    assert json.loads(purged.stdout) == {"purged": 1}
    assert json.loads(relay(["dlq", "list", "--json"], settings).stdout) == []


def test_dlq_account_option_narrows_list_and_replay(settings, redis_client, sandbox):
    settings = make_settings(settings.redis_url.get_secret_value(), sandbox.url, attentive_accounts=ACCOUNTS)
    producer, delivery = Producer(settings, redis_client), delivery_for(settings, redis_client)
    ids = {}
    for name in ("brand-a", "brand-b", "default"):
        add_fault(sandbox, status=400, times=1)
        ids[name] = producer.enqueue({**GOOD, "account": name} if name != "default" else GOOD)
        assert delivery.run(ids[name], ticket_for(ids[name], 0)) == "dead:rejected"
    redis_client.delete(*settings.queues)
    env = {"ATTENTIVE_ACCOUNTS": ACCOUNTS}
    listed = json.loads(relay(["dlq", "list", "--account", "brand-a", "--json"], settings, **env).stdout)
    assert [(e["job_id"], e["account"]) for e in listed] == [(ids["brand-a"], "brand-a")]
    default = json.loads(
        relay(["dlq", "list", "--json", "--account", "default", "--reason", "rejected"], settings, **env).stdout
    )
    assert [e["job_id"] for e in default] == [ids["default"]]
    replayed = relay(
        ["dlq", "replay", "--all", "--account", "brand-b", "--reason", "rejected", "--json"], settings, **env
    )
    assert json.loads(replayed.stdout) == {"replayed": 1, "stale": 0, "missing": 0, "unserved": 0}
    assert queued_count(redis_client, "attentive.brand-b") == 1
    assert queued_count(redis_client, "attentive.brand-a") == queued_count(redis_client, "attentive") == 0
    left = json.loads(relay(["dlq", "list", "--json"], settings, **env).stdout)
    assert sorted(e["job_id"] for e in left) == sorted([ids["brand-a"], ids["default"]])


def test_unreachable_redis_is_a_clear_error(settings):
    result = relay(["stats"], settings.model_copy(update={"redis_url": SecretStr("redis://127.0.0.1:9/0")}))
    assert result.returncode == 3 and "cannot reach Redis" in result.stderr


def attentive_env(settings, token: str = TOKEN) -> dict[str, str]:
    return {"ATTENTIVE_BASE_URL": settings.attentive_base_url, "ATTENTIVE_API_TOKEN": token}


def test_check_passes_when_redis_answers_and_the_token_is_accepted(settings):
    result = relay(["check", "--json"], settings, **attentive_env(settings))
    assert result.returncode == 0 and json.loads(result.stdout) == {"ok": True, "redis": "ok", "attentive": "ok"}


def test_check_fails_clearly_on_a_refused_token_or_a_missing_redis(settings):
    refused = relay(["check"], settings, **attentive_env(settings, "wrong-token"))
    assert refused.returncode == 1 and "attentive: token refused (401)" in refused.stderr
    assert "wrong-token" not in refused.stderr + refused.stdout
    no_redis = relay(["check", "--json"], settings, **attentive_env(settings), REDIS_URL="redis://127.0.0.1:9/0")
    assert no_redis.returncode == 1 and json.loads(no_redis.stdout)["redis"].startswith("unreachable")
    no_token = relay(["check"], settings, ATTENTIVE_BASE_URL=settings.attentive_base_url)
    assert no_token.returncode == 1 and "ATTENTIVE_API_TOKEN is not set" in no_token.stderr


def test_check_reports_every_accounts_token(settings):
    accounts = json.dumps({"brand-a": {"token": TOKEN}, "brand-b": {"token": "wrong-token"}, "brand-c": {}})
    result = relay(["check", "--json"], settings, **attentive_env(settings), ATTENTIVE_ACCOUNTS=accounts)
    assert result.returncode == 1 and json.loads(result.stdout) == {
        "ok": False,
        "redis": "ok",
        "attentive": "ok",
        "attentive:brand-a": "ok",
        "attentive:brand-b": "token refused (401)",
        "attentive:brand-c": "ATTENTIVE_ACCOUNTS brand-c.token is not set",
    }
    human = relay(["check"], settings, **attentive_env(settings), ATTENTIVE_ACCOUNTS=accounts)
    assert "attentive:brand-b: token refused (401)" in human.stderr and "attentive:brand-a: ok" in human.stdout
    assert "wrong-token" not in result.stdout + result.stderr + human.stdout + human.stderr
    healthy = relay(["check", "--json"], settings, **attentive_env(settings), ATTENTIVE_ACCOUNTS=ACCOUNTS)
    assert healthy.returncode == 0 and json.loads(healthy.stdout)["attentive:brand-b"] == "ok"


def test_attributes_reads_what_attentive_holds_for_a_phone(settings, producer, redis_client, sandbox):
    job_id = producer.enqueue(
        {"kind": "custom_attributes", "user": {"phone": "+14155552671"}, "properties": {"tier": "gold", "visits": 3}}
    )
    assert delivery_for(settings, redis_client).run(job_id, ticket_for(job_id, 0)) == "delivered"
    result = relay(["attributes", "--phone", "(415) 555-2671", "--json"], settings, **attentive_env(settings))
    assert result.returncode == 0
    assert json.loads(result.stdout) == [{"name": "tier", "value": "gold"}, {"name": "visits", "value": 3}]
    seen = sandbox_requests(sandbox)
    assert len(seen) == 1, "the GET is not recorded as a delivery"


def test_attributes_wants_exactly_one_identifier_before_any_request(settings, sandbox):
    both = relay(
        ["attributes", "--phone", "+14155552671", "--email", "a@example.com"], settings, **attentive_env(settings)
    )
    neither = relay(["attributes"], settings, **attentive_env(settings))
    assert both.returncode == neither.returncode == 2
    assert "exactly one of --phone or --email" in both.stderr
    assert httpx.get(sandbox.url + "/__sandbox/stats").json() == {}


def test_bad_settings_are_named_without_their_values(settings):
    result = relay(
        ["stats"],
        settings,
        ATTENTIVE_FRESHNESS_HOURS="secret-value-1",
        ATTENTIVE_RATE_LIMITS="{not json secret-value-2",
    )
    assert result.returncode == 2 and "invalid settings" in result.stderr
    assert "secret-value" not in result.stderr + result.stdout
    bad_number = relay(["stats"], settings, ATTENTIVE_FRESHNESS_HOURS="secret-value-1")
    assert "ATTENTIVE_FRESHNESS_HOURS" in bad_number.stderr and "secret-value" not in bad_number.stderr


def test_enqueue_reads_every_line_whatever_a_bad_one_holds(settings, redis_client, tmp_path: Path):
    bad_times = [
        json.dumps({**GOOD, "occurredAt": w}) for w in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00")
    ]
    lines = [
        *(line.encode() for line in bad_times),
        json.dumps({**GOOD, "properties": {"p": "caf\xe9"}}, ensure_ascii=False).encode("latin-1"),  # not UTF-8
        json.dumps({**GOOD, "properties": {"p": "x"}}).replace('"x"', "NaN").encode(),
        json.dumps({**GOOD, "properties": {"p": "\udcff"}}).encode(),  # a lone surrogate, escaped
        json.dumps(GOOD).encode(),
    ]
    source = tmp_path / "jobs.ndjson"
    source.write_bytes(b"\n".join(lines) + b"\n")
    result = relay(["enqueue", str(source), "--json"], settings)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert json.loads(result.stdout) == {"enqueued": 1, "invalid": 5}
    assert result.stderr.splitlines() == [
        "line 1: invalid job: occurredAt: must fall between years 1 and 9999 in UTC",
        "line 2: invalid job: occurredAt: must fall between years 1 and 9999 in UTC",
        "line 3: invalid job: not valid UTF-8 text",
        "line 4: invalid job: properties.p: must be a finite number (NaN and Infinity cannot be sent)",
        "line 5: invalid job: properties.p: must be valid Unicode text (it holds a lone surrogate, e.g. from bytes "
        "that are not UTF-8)",
    ]
    assert queued_count(redis_client, "attentive") == 1


def test_enqueue_of_a_missing_or_unreadable_file_is_one_error_line_and_exit_2(settings, tmp_path: Path):
    for path, reason in ((tmp_path / "nope.ndjson", "No such file or directory"), (tmp_path, "Is a directory")):
        result = relay(["enqueue", str(path)], settings)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.splitlines() == [f"cannot read {path}: {reason}"]


SEGMENT_LINES = "\n".join(
    [
        json.dumps({"type": "track", "userId": "u-1", "event": "Fine"}),
        '{"type": "track", "userId": "u-1", "event": "Product Viewed", "properties": '
        '{"product_id": "p", "price": 1, "quantity": NaN}}',
        json.dumps({"type": "track", "userId": "u-1", "event": "X", "timestamp": "0001-01-01T00:00:00+01:00"}),
        json.dumps({"type": "track", "userId": "u-1", "event": "Fine"}),
    ]
)


def test_segment_is_a_flag_and_options_go_in_any_order(settings, redis_client, tmp_path: Path):
    source = tmp_path / "messages.ndjson"
    source.write_text(SEGMENT_LINES + "\n")
    for args, stdin in (
        (["enqueue", "-", "--json", "--segment"], SEGMENT_LINES),
        (["enqueue", "--segment", "--json", "-"], SEGMENT_LINES),
        (["enqueue", "--json", "--segment", str(source)], None),
        (["enqueue", "--segment", str(source), "--json"], None),
    ):
        redis_client.flushdb()
        result = relay(args, settings, stdin=stdin)
        assert json.loads(result.stdout) == {"enqueued": 2, "invalid": 2, "skipped": 0}, args
        assert result.returncode == 1 and queued_count(redis_client, "attentive") == 2
        assert [line.split(":")[0] for line in result.stderr.splitlines()] == ["line 2", "line 3"]
    readme_form = relay(["enqueue", "--segment", str(source)], settings)
    assert readme_form.stdout.strip() == "enqueued 2 jobs, invalid 2, skipped 0"
