"""Dead letters by filter and time (issue 17, finding 1): `dlq list|count|replay|purge` take one
filter; a bulk replay is paced behind fresh work, resumable, and skips events that would be stale.

CLI calls run in process (typer's runner) to keep the module fast; tests/test_cli.py runs the
real command. The pacing at scale (no 429, fresh jobs within latency + 1 s, an interrupted
replay resumed) is tests/test_replay_at_scale.py's, with real processes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from producers.producer import Producer
from producers.store import keys
from producers.store.message import tickets_in
from worker.cli import cli
from worker.deadletter import DeadLetters, Replay

from conftest import PURCHASE, TOKEN, delivery_for, env_for, make_settings, sandbox_requests

PHONE, EMAIL = "+14155552671", "jane.doe@example.com"
ACCOUNTS = json.dumps({"brand-a": {"token": TOKEN}})


def event(**extra: Any) -> dict[str, Any]:
    return {"kind": "custom_event", "type": "Order Shipped", "user": {"phone": "+14155550100"}, **extra}


def bury(client, job_id: str, job: dict[str, Any], reason: str, status: int | None, age_s: float) -> None:
    """A dead-letter entry as a worker writes it, dead-lettered ``age_s`` ago."""
    at = datetime.now(UTC) - timedelta(seconds=age_s)
    stamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    entry = {
        "job_id": job_id,
        "job": job,
        "reason": reason,
        "detail": "test",
        "status": status,
        "response": "",
        "attempts": [{"at": stamp, "attempt": 1, "status": status}],
        "first_seen": stamp,
        "last_seen": stamp,
        "round": 0,
    }
    client.set(keys.dead(job_id), json.dumps(entry), px=86_400_000)
    client.zadd(keys.DEAD_INDEX, {job_id: int(at.timestamp() * 1000)})


def enqueued_then_buried(client, settings, job: dict[str, Any], **how: Any) -> str:
    """Enqueued by the producer (so the erasure index knows its people), then dead-lettered."""
    job_id = Producer(settings, client).enqueue(job)
    client.delete(keys.job(job_id), *settings.queues)
    client.zrem(keys.QUEUED, job_id)
    bury(client, job_id, job, **how)
    return job_id


def run(settings, *args: str, stdin: str | None = None) -> Any:
    env = {k: v for k, v in env_for(settings).items() if k in ("REDIS_URL", "ATTENTIVE_ACCOUNTS")}
    env["ATTENTIVE_API_TOKEN"] = TOKEN
    env["ATTENTIVE_RATE_LIMIT"] = str(settings.attentive_rate_limit)
    return CliRunner().invoke(cli, list(args), input=stdin, env=env, catch_exceptions=False)


def listed(settings, *args: str, stdin: str | None = None) -> list[str]:
    result = run(settings, "dlq", "list", "--json", *args, stdin=stdin)
    assert result.exit_code == 0, result.stderr
    return sorted(e["job_id"] for e in json.loads(result.stdout))


@pytest.fixture
def store(redis_server, redis_client, sandbox):
    settings = make_settings(redis_server.url, sandbox.url, attentive_accounts=ACCOUNTS)
    c = redis_client
    enqueued_then_buried(c, settings, event(user={"phone": PHONE}), reason="rejected", status=400, age_s=3 * 3600)
    purchase = {**PURCHASE, "account": "brand-a", "user": {"email": EMAIL}}
    enqueued_then_buried(c, settings, purchase, reason="server_error", status=503, age_s=1800)
    bury(c, "old-429", event(account="brand-a"), "rate_limited", 429, 2 * 86400)
    bury(c, "identity-401", {"kind": "identity", "phone": PHONE}, "unauthorized", 401, 600)
    bury(c, "yotpo-1", {"kind": "yotpo_custom_event", "event_name": "x"}, "invalid", None, 7200)
    return settings


def ids_by(store_settings, client) -> dict[str, str]:
    entries = DeadLetters(client, store_settings).list()
    return {e["reason"]: e["job_id"] for e in entries}


def test_each_filter_selects_its_entries_and_shows_no_person(store, redis_client):
    r = ids_by(store, redis_client)
    everyone = sorted(r.values())
    assert listed(store) == everyone
    assert listed(store, "--since", "1h") == sorted([r["server_error"], r["unauthorized"]])
    assert listed(store, "--since", "90m", "--until", "15m") == [r["server_error"]]
    assert listed(store, "--until", "1d") == [r["rate_limited"]]
    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert listed(store, "--since", an_hour_ago) == listed(store, "--since", "60m")
    naive = (datetime.now(UTC) - timedelta(hours=1)).replace(tzinfo=None).isoformat()
    assert listed(store, "--since", naive) == listed(store, "--since", "1h"), "a time without a zone is UTC"
    assert listed(store, "--until", (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")) == [
        r["rate_limited"]
    ]
    assert listed(store, "--reason", "unauthorized") == [r["unauthorized"]]
    assert listed(store, "--status", "429") == [r["rate_limited"]]
    assert listed(store, "--status", "5xx") == [r["server_error"]]
    assert listed(store, "--status", "4XX") == sorted([r["rejected"], r["rate_limited"], r["unauthorized"]])
    assert listed(store, "--kind", "identity") == [r["unauthorized"]]
    assert listed(store, "--account", "brand-a") == sorted([r["server_error"], r["rate_limited"]])
    assert listed(store, "--account", "default", "--kind", "custom_event") == [r["rejected"]]
    assert listed(store, "--destination", "yotpo") == [r["invalid"]]
    assert listed(store, "--destination", "attentive") == sorted(set(everyone) - {r["invalid"]})
    assert listed(store, "--destination", "attentive_graphql") == []
    # --person: any form of the phone or email, through the keyed index (the identity job was
    # written without the producer, so the index does not know it).
    assert listed(store, "--person", "(415) 555-2671") == [r["rejected"]]
    assert listed(store, "--person", "-", stdin=" Jane.Doe@EXAMPLE.com\n") == [r["server_error"]]
    assert listed(store, "--person", "other@example.com") == []
    for value in ("(415) 555-2671", "Jane.Doe@EXAMPLE.com"):
        for command in ("list", "count"):
            result = run(store, "dlq", command, "--json", "--person", value)
            assert "555" not in result.output and "jane" not in result.output.lower()
    assert not [k for k in redis_client.keys("*") if b"jane" in k.lower() or b"555" in k], "no key names a person"


@pytest.mark.parametrize(
    ("option", "value", "rule"),
    [
        ("--since", "yesterday", "ISO 8601"),
        ("--until", "2h30", "ISO 8601"),
        ("--since", "1h", "earlier than --until"),
        ("--reason", "boom", "must be one of"),
        ("--status", "700", "HTTP status"),
        ("--kind", "sms", "must be one of"),
        ("--account", "no/such", "account name"),
        ("--destination", "klaviyo", "must be one of"),
        ("--person", "not-a-person-555", "phone number or an email"),
    ],
)
def test_a_bad_filter_value_exits_2_naming_the_option_and_its_rule(settings, option, value, rule):
    extra = ["--until", "2h"] if rule == "earlier than --until" else []
    for command in (["list"], ["count"], ["replay", "--all"], ["purge", "--all"]):
        result = run(settings, "dlq", *command, option, value, *extra)
        assert result.exit_code == 2 and f"invalid {option}:" in result.stderr and rule in result.stderr
        if option == "--person":
            assert value not in result.output


def test_count_list_replay_and_purge_agree_on_one_filter(store, redis_client):
    flt = ["--since", "2d", "--until", "20m", "--account", "brand-a"]  # the 503 purchase only, not the old 429
    r = ids_by(store, redis_client)
    chosen = listed(store, *flt)
    assert chosen == [r["server_error"]]
    counted = json.loads(run(store, "dlq", "count", "--json", *flt).stdout)
    assert counted == {"count": 1, "by_reason": {"server_error": 1}}
    loose = ["--destination", "attentive", "--status", "4xx"]
    assert json.loads(run(store, "dlq", "count", "--json", *loose).stdout)["count"] == len(listed(store, *loose)) == 3
    replayed = run(store, "dlq", "replay", "--all", "--json", *flt)
    assert json.loads(replayed.stdout) == {"replayed": 1, "stale": 0, "missing": 0, "unserved": 0}
    assert "replay: 1 of 1 entries done" in replayed.stderr
    assert redis_client.hget(keys.job(r["server_error"]), "state") == b"queued"
    assert listed(store, *flt) == []
    purged = run(store, "dlq", "purge", "--all", "--json", *loose)
    assert json.loads(purged.stdout) == {"purged": 3}
    assert listed(store) == [r["invalid"]]
    assert run(store, "dlq", "purge", "--all", "--reason", "rejected").exit_code == 0
    assert run(store, "dlq", "replay", "--reason", "invalid").exit_code == 2, "ids or --all, as before"


def test_an_interrupted_replay_resumes_and_sends_nothing_twice(redis_server, redis_client, sandbox):
    settings = make_settings(redis_server.url, sandbox.url, attentive_rate_limit=1000)
    ids = [f"job-{i:03}" for i in range(150)]
    for i, job_id in enumerate(ids):
        bury(redis_client, job_id, event(type=f"Event {i}"), "server_error", 503, 3600 - i)
    store = DeadLetters(redis_client, settings)

    def cut(line: str) -> None:
        raise KeyboardInterrupt  # Ctrl-C right after the first chunk

    with pytest.raises(KeyboardInterrupt):
        Replay(store, progress=cut, chunk=40).run(store.ids()[::-1])
    assert redis_client.zcard(keys.DEAD_INDEX) == 110
    first = run(settings, "dlq", "replay", "--all", "--limit", "30", "--json")
    assert json.loads(first.stdout)["replayed"] == 30 and redis_client.zcard(keys.DEAD_INDEX) == 80
    rest = run(settings, "dlq", "replay", "--all", "--json")
    assert json.loads(rest.stdout) == {"replayed": 80, "stale": 0, "missing": 0, "unserved": 0}
    again = run(settings, "dlq", "replay", *ids[:5], "--json")
    assert json.loads(again.stdout)["missing"] == 5 and again.exit_code == 1, "a third run finds nothing"
    tickets = [t for m in redis_client.lrange("attentive", 0, -1) for t in tickets_in(m)]
    assert sorted(tickets) == sorted(f"{i}.1" for i in ids), "one message each"
    delivery = delivery_for(settings, redis_client)
    assert {delivery.run(t.rpartition(".")[0], t) for t in tickets} == {"delivered"}
    sent = [r["body"]["type"] for r in sandbox_requests(sandbox)]
    assert sorted(sent) == sorted(f"Event {i}" for i in range(150)), "every job sent once"
    assert int(redis_client.hget(keys.STATS, "replayed")) == 150


def test_an_event_stale_by_its_turn_is_skipped_unless_include_stale(settings, redis_client):
    now = datetime.now(UTC)
    bury(redis_client, "fresh", event(occurredAt=(now - timedelta(hours=1)).isoformat()), "server_error", 503, 60)
    almost = (now - timedelta(hours=12) + timedelta(seconds=20)).isoformat()  # stale 20 s from now
    bury(redis_client, "almost", event(occurredAt=almost), "server_error", 503, 60)
    old = (now - timedelta(hours=13)).isoformat()
    bury(redis_client, "old", event(occurredAt=old), "server_error", 503, 60)
    bury(redis_client, "attrs", {"kind": "custom_attributes", "user": {"phone": PHONE}, "properties": {"a": "b"}},
         "server_error", 503, 60)  # fmt: skip
    skipped = run(settings, "dlq", "replay", "--all", "--json")
    assert json.loads(skipped.stdout) == {"replayed": 2, "stale": 2, "missing": 0, "unserved": 0}
    assert "skipped 2 stale events" in skipped.stderr and "almost" in skipped.stderr and "old" in skipped.stderr
    assert listed(settings) == ["almost", "old"], "kept in the dead-letter queue"
    included = run(settings, "dlq", "replay", "--all", "--include-stale", "--json")
    assert json.loads(included.stdout) == {"replayed": 2, "stale": 0, "missing": 0, "unserved": 0}
    assert "warning: replayed 2 stale events anyway" in included.stderr
    assert listed(settings) == [] and redis_client.hget(keys.job("old"), "state") == b"queued"
