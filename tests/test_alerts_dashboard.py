"""The alert rules and the Grafana dashboard in deploy/: they parse, and every metric they name
is served by `attentive-relay metrics` next to a running worker."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from producers.producer import Producer
from worker import observed
from worker.local.processes import free_port

from conftest import TOKEN, make_settings, wait_for

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "attentive-relay.json"
RUNBOOK = ROOT / "docs" / "operations.md"
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
ALERT_NAME = re.compile(r"^[A-Z][A-Za-z0-9]+$")
SEVERITIES = {"warning", "critical"}
#: Grafana's variables, as a query sees them once Grafana has put in their values.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$account": ".*", "${datasource}": "prom"}
#: The series a family of each type exposes beside its name.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panel_exprs() -> list[str]:
    exprs = []
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            exprs.append(expr)
    return exprs


def _metric_names(expr: str) -> set[str]:
    """The metric names an expression selects, from its parsed tree."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name is not None:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return names


def test_the_alert_rules_parse_and_follow_prometheus_rule_format():
    doc = yaml.safe_load(ALERTS.read_text())
    assert set(doc) == {"groups"}
    group_names = [group["name"] for group in doc["groups"]]
    assert len(group_names) == len(set(group_names)), "group names are unique"
    seen = set()
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        assert group["rules"], f"group {group['name']} has rules"
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule
            assert ALERT_NAME.match(rule["alert"]) and rule["alert"] not in seen, rule["alert"]
            seen.add(rule["alert"])
            tree = promql_parser.parse(rule["expr"])  # raises on a syntax or type error
            not_a_vector = (promql_parser.NumberLiteral, promql_parser.StringLiteral, promql_parser.MatrixSelector)
            assert not isinstance(tree, not_a_vector), f"{rule['alert']}: an alert needs an instant vector"
            if "for" in rule:
                assert promql_parser.parse_duration(rule["for"]).total_seconds() > 0
            assert all(LABEL_NAME.match(k) and isinstance(v, str) for k, v in rule["labels"].items())
            assert rule["labels"]["severity"] in SEVERITIES
            assert all(LABEL_NAME.match(k) and isinstance(v, str) for k, v in rule["annotations"].items())
            assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
    assert len(seen) >= 9


def test_every_alert_has_a_runbook_line_in_the_operations_doc():
    text = RUNBOOK.read_text()
    for rule in _rules():
        assert re.search(rf"^\| `{rule['alert']}` \|.+\|.+\|$", text, re.M), f"{rule['alert']} in the alerts table"


def test_the_dashboard_is_importable_every_panel_with_a_datasource_and_targets():
    dash = _dashboard()
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    assert dash["uid"] and dash["title"] and dash["id"] is None
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dash["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [panel for panel in dash["panels"] if panel["type"] != "row"]
    assert len(graphs) >= 10
    for panel in graphs:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
    for expr in _panel_exprs():
        promql_parser.parse(expr)
    titles = " ".join(panel["title"].lower() for panel in graphs)
    for topic in ("deliveries", "age", "429", "queue depth", "queue age", "dead letters", "paused", "deletion"):
        assert topic in titles


@pytest.fixture
def metrics_url(redis_server) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "metrics", "--port", str(port)],
        env={**os.environ, "REDIS_URL": redis_server.url},
        stdout=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        proc.terminate()
        proc.wait(10)


def _scrape(url: str) -> str | None:
    try:
        return httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return None


def _exposed(text: str) -> tuple[set[str], dict[tuple[str, tuple], float]]:
    """Every series name the exposition can hold (a histogram's _bucket/_count/_sum, a counter's
    _total, even with no sample yet), and the samples."""
    names, samples = set(), {}
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        for sample in family.samples:
            names.add(sample.name)
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return names, samples


def test_a_real_delivery_is_observed_and_every_metric_named_is_served(
    redis_server, redis_client, sandbox, start_worker, metrics_url
):
    settings = make_settings(
        redis_server.url, sandbox.url, attentive_accounts=json.dumps({"brand-a": {"token": TOKEN}})
    )
    producer = Producer(settings, redis_client)
    producer.enqueue(
        {"kind": "custom_event", "type": "Ordered", "user": {"email": "a@example.com"}, "account": "brand-a"}
    )
    producer.enqueue({"kind": "custom_attributes", "user": {"email": "a@example.com"}, "properties": {"tier": "gold"}})
    start_worker(settings_=settings, concurrency=1)

    def delivered() -> dict[tuple[str, tuple], float] | None:
        text = _scrape(metrics_url)
        if text is None:
            return None
        got = _exposed(text)[1]
        return got if got.get(("attentive_relay_delivered_total", ())) == 2 else None

    got = wait_for(delivered, 15, "both jobs delivered and the metrics endpoint")
    event = (("account", "brand-a"), ("kind", "custom_event"))
    assert got[("attentive_relay_delivery_age_seconds_count", event)] == 1
    assert got[("attentive_relay_delivery_age_seconds_bucket", (*event, ("le", "43200")))] == 1
    assert got[("attentive_relay_delivery_age_seconds_bucket", (*event, ("le", "+Inf")))] == 1
    assert 0 <= got[("attentive_relay_delivery_age_seconds_sum", event)] < 15, "occurredAt was stamped at enqueue"
    attributes = (("account", "default"), ("kind", "custom_attributes"))
    assert got[("attentive_relay_delivery_age_seconds_count", attributes)] == 1, "no occurredAt: aged from its queueing"
    assert got[("attentive_relay_requests_total", (("account", "brand-a"), ("status", "2xx")))] == 1
    assert ("attentive_relay_requests_total", (("account", "brand-a"), ("status", "429"))) not in got

    names, _ = _exposed(_scrape(metrics_url) or "")
    named = {name for rule in _rules() for name in _metric_names(rule["expr"])}
    named |= {name for expr in _panel_exprs() for name in _metric_names(expr)}
    assert "attentive_relay_delivery_age_seconds_bucket" in named and "attentive_relay_circuit_open" in named
    assert named - names == set(), "metrics named in a rule or panel but not served"


def test_pauses_and_open_circuits_show_from_their_redis_hashes(redis_client, metrics_url):
    since = "2025-01-01T00:00:00Z"
    redis_client.hset("relay:paused", "brand-a|attentive", json.dumps({"reason": "unauthorized", "since": since}))
    redis_client.hset("relay:circuit", "brand-b|attentive", json.dumps({"reason": "5xx", "since": since}))
    text = wait_for(lambda: _scrape(metrics_url), 15, "the metrics endpoint")
    got = _exposed(text)[1]
    paused = (("account", "brand-a"), ("destination", "attentive"), ("reason", "unauthorized"))
    assert got[("attentive_relay_account_paused", paused)] == 1
    assert got[("attentive_relay_circuit_open", (("account", "brand-b"), ("destination", "attentive")))] == 1


def test_observations_bucket_ages_and_count_only_requests_this_attempt_sent():
    fields = observed.on_delivered(
        "a",
        json.dumps({"kind": "custom_event", "occurredAt": "2025-01-01T00:00:00Z"}),
        0,
        1735689600_000 + 50_000 * 1000,
    )
    assert fields[0] == "age|a|custom_event|86400" and fields[3] == 50_000
    assert observed.on_delivered("a", '{"kind": "identity"}', 1_000, 1_250)[:4] == [
        "age|a|identity|0.5",
        1,
        "age|a|identity|sum",
        0.25,
    ]
    sent = [{"attempt": 2, "status": 429}]
    assert observed.on_retry("a", 2, sent) == ["req|a|429", 1]
    assert observed.on_retry("a", 3, sent) == [], "an earlier attempt's request is not counted again"
    assert observed.on_dead("a", 1, "stale", '{"kind": "purchase"}', []) == ["stale|a|purchase", 1]
    assert observed.on_dead("a", 1, "crashed", "{", [{"attempt": 1, "status": None, "error": "crashed"}]) == []
    assert observed.cumulative({"0.5": 1, "43200": 2, "+Inf": 1})[-1] == ("+Inf", 4)
