"""Prometheus metrics that Flower does not have: backlog, retries, dead letters, limiter waits.

Read from Redis at each scrape (`attentive-relay metrics --port 9808`), so any number of
metrics endpoints can run, and they agree. All metrics are prefixed ``attentive_relay_``:

    queue_depth             gauge    jobs waiting for a worker
    queue_messages          gauge    broker messages carrying them, every account's queue (what KEDA scales on)
    scheduled               gauge    retries and rate-limited jobs waiting in the schedule
    in_flight               gauge    attempts holding a lease
    queued_overdue          gauge    jobs queued longer than ATTENTIVE_ORPHAN_S (a backlog, or stuck)
    oldest_queued_seconds   gauge    how long the oldest queued job has waited (its true age)
    queued_unserved         gauge    queued jobs no configured account or queue serves (see account_unserved)
    oldest_waiting_seconds  gauge    how long the oldest job waiting for an identity job has waited
    dead_letter_stored      gauge    dead-letter entries kept
    enqueued_total          counter  jobs queued by producers
    delivered_total         counter  jobs Attentive accepted
    dead_lettered_total     counter  jobs dead-lettered, by reason
    retries_total           counter  retries scheduled
    rate_limit_waits_total  counter  jobs parked until their rate-limit slot
    replayed_total          counter  jobs replayed from the dead-letter queue
    reconciled_total        counter  queued jobs whose broker message was lost, queued again
    erased_total            counter  jobs deleted by `attentive-relay erase` before they ended
    expired_total           counter  jobs whose record expired before they ended
    skipped_total           counter  Segment messages skipped, by reason
    waiting                 gauge    jobs waiting for an identity job
    waiters_over_cap_total  counter  jobs queued without waiting: their identity job had ATTENTIVE_MAX_WAITERS
    privacy_requests_filed_total      counter  deletion requests Attentive took (`attentive-relay erase`)
    privacy_requests_processed_total  counter  deletion requests Attentive reports processed
    privacy_requests_retries_total    counter  retries of filing or checking them
    privacy_requests_failed_total     counter  deletion requests that failed, by reason (see erase --status)
    privacy_requests_open             gauge    deletion requests still to file or to check

The same by account (`producers.accounts`), labelled ``account`` (``default`` for the account
of ATTENTIVE_API_TOKEN), under their own names so that summing them never counts a job twice:

    account_queue_depth         gauge    the account's jobs waiting for a worker
    account_scheduled           gauge    the account's jobs in the retry schedule
    account_oldest_queued_seconds gauge  how long the account's oldest queued job has waited
    account_unserved            gauge    the account's queued and scheduled jobs no worker takes (an account
                                         not in ATTENTIVE_ACCOUNTS, or a queue the settings do not name)
    account_delivered_total     counter  the account's jobs Attentive accepted
    account_dead_lettered_total counter  the account's jobs dead-lettered, by reason

Observed as each attempt ends (`worker.observed`), by account:

    delivery_age_seconds  histogram  occurredAt to Attentive's 2xx (a kind without occurredAt: from when
                                     the job was first queued), labelled account and kind; buckets up to
                                     and past Attentive's 12-hour journey window (le="43200")
    requests_total        counter    requests sent, by response: status 2xx, 429, 4xx, 5xx or none
                                     (a timeout or connection error), labelled account and status
    events_stale_total    counter    jobs dead-lettered unsent as past the freshness window, labelled
                                     account and kind

Held back, from the ``relay:paused`` and ``relay:circuit`` hashes (field ``ACCOUNT|DESTINATION``,
value JSON with ``reason`` and ``since``): 1 for each pair, none when nothing is held back:

    account_paused        gauge      deliveries of an account to a destination paused (a 401 or 403),
                                     labelled account, destination and reason
    circuit_open          gauge      the circuit of an account and destination open (sustained failures),
                                     labelled account and destination
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from producers.settings import Settings
from producers.store import keys
from worker import observed
from worker.counters import stats

PREFIX = "attentive_relay_"


class RelayCollector(Collector):
    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        s = stats(self.client, self.settings)
        for name, key, doc in (
            ("queue_depth", "queued", "Jobs waiting for a worker."),
            ("queue_messages", "queued_messages", "Broker messages carrying them (up to 32 jobs each)."),
            ("scheduled", "scheduled", "Retries and rate-limited jobs waiting for their time."),
            ("in_flight", "in_flight", "Delivery attempts holding a lease."),
            ("dead_letter_stored", "dead_letter_stored", "Dead-letter entries kept."),
            ("queued_overdue", "queued_overdue", "Jobs queued longer than ATTENTIVE_ORPHAN_S."),
            ("oldest_queued_seconds", "oldest_queued_s", "How long the oldest queued job has waited."),
            ("waiting", "waiting", "Jobs waiting for an identity job."),
            ("oldest_waiting_seconds", "oldest_waiting_s", "How long the oldest waiting job has waited."),
            ("queued_unserved", "queued_unserved", "Queued jobs that no configured account or queue serves."),
        ):
            yield GaugeMetricFamily(PREFIX + name, doc, value=s[key])
        for name, key, doc in (
            ("enqueued", "enqueued", "Jobs queued by producers."),
            ("delivered", "delivered", "Jobs Attentive accepted."),
            ("retries", "retries", "Retries scheduled."),
            ("rate_limit_waits", "deferred", "Jobs parked until their rate-limit slot."),
            ("replayed", "replayed", "Jobs replayed from the dead-letter queue."),
            ("reconciled", "reconciled", "Queued jobs whose broker message was lost, queued again."),
            ("erased", "erased", "Jobs deleted by attentive-relay erase before they ended."),
            ("expired", "expired", "Jobs whose record expired (ATTENTIVE_JOB_RETENTION_HOURS) before they ended."),
            ("waiters_over_cap", "waiters_over_cap", "Jobs queued without waiting: ATTENTIVE_MAX_WAITERS reached."),
        ):
            yield CounterMetricFamily(PREFIX + name, doc, value=s[key])
        dead = CounterMetricFamily(PREFIX + "dead_lettered", "Jobs dead-lettered, by reason.", labels=["reason"])
        for reason, count in s["dead_letter"].items():
            dead.add_metric([reason], count)
        yield dead
        skipped = CounterMetricFamily(PREFIX + "skipped", "Segment messages skipped, by reason.", labels=["reason"])
        for reason, count in s["skipped"].items():
            skipped.add_metric([reason], count)
        yield skipped
        yield from _privacy(s["privacy"])
        yield from _by_account(s["accounts"], s["unserved"])
        yield from _observed(observed.read(self.client))
        yield from _held_back(self.client)


def _privacy(privacy: dict[str, Any]) -> Iterator[Metric]:
    name = PREFIX + "privacy_requests_"
    yield CounterMetricFamily(name + "filed", "Deletion requests Attentive took.", value=privacy["filed"])
    yield CounterMetricFamily(name + "processed", "Deletion requests Attentive processed.", value=privacy["processed"])
    yield CounterMetricFamily(name + "retries", "Retries of filing or checking them.", value=privacy["retries"])
    failed = CounterMetricFamily(name + "failed", "Deletion requests that failed, by reason.", labels=["reason"])
    for reason, count in privacy["failed"].items():
        failed.add_metric([reason], count)
    yield failed
    yield GaugeMetricFamily(name + "open", "Deletion requests still to file or to check.", value=privacy["open"])


def _by_account(accounts: dict[str, dict[str, Any]], unserved: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    depth = GaugeMetricFamily(
        PREFIX + "account_queue_depth", "Jobs waiting in the account's queue.", labels=["account"]
    )
    scheduled = GaugeMetricFamily(
        PREFIX + "account_scheduled", "The account's jobs waiting in the retry schedule.", labels=["account"]
    )
    delivered = CounterMetricFamily(
        PREFIX + "account_delivered", "The account's jobs Attentive accepted.", labels=["account"]
    )
    dead = CounterMetricFamily(
        PREFIX + "account_dead_lettered", "The account's jobs dead-lettered, by reason.", labels=["account", "reason"]
    )
    oldest = GaugeMetricFamily(
        PREFIX + "account_oldest_queued_seconds",
        "How long the account's oldest queued job has waited.",
        labels=["account"],
    )
    not_served = GaugeMetricFamily(
        PREFIX + "account_unserved",
        "The account's queued and scheduled jobs that no configured account or queue serves.",
        labels=["account"],
    )
    for name, counts in accounts.items():
        depth.add_metric([name], counts["queued"])
        scheduled.add_metric([name], counts["scheduled"])
        oldest.add_metric([name], counts["oldest_queued_s"])
        lost = unserved.get(name, {})
        not_served.add_metric([name], lost.get("queued", 0) + lost.get("scheduled", 0))
        delivered.add_metric([name], counts["delivered"])
        for reason, count in counts["dead_letter"].items():
            dead.add_metric([name, reason], count)
    yield from (depth, scheduled, delivered, dead, oldest, not_served)


def _observed(seen: observed.Observed) -> Iterator[Metric]:
    age = HistogramMetricFamily(
        PREFIX + "delivery_age_seconds",
        "From the job's occurredAt (else when first queued) to Attentive's 2xx, by account and kind.",
        labels=["account", "kind"],
    )
    for (account, kind), per_bucket in sorted(seen.ages.items()):
        age.add_metric([account, kind], observed.cumulative(per_bucket), per_bucket.get("sum", 0.0))
    yield age
    for name, doc, label, counts in (
        (
            "requests",
            "Requests sent, by account and response (2xx, 429, 4xx, 5xx, none: no response).",
            "status",
            seen.requests,
        ),
        (
            "events_stale",
            "Jobs dead-lettered unsent as past the freshness window, by account and kind.",
            "kind",
            seen.stale,
        ),
    ):
        counter = CounterMetricFamily(PREFIX + name, doc, labels=["account", label])
        for labels, count in sorted(counts.items()):
            counter.add_metric(list(labels), count)
        yield counter


PAUSED = keys.PAUSED
"""Hash: ``ACCOUNT|DESTINATION`` -> JSON ``{"reason": ..., "since": ...}`` while paused."""
CIRCUIT = keys.CIRCUIT
"""Hash: ``ACCOUNT|DESTINATION`` -> JSON ``{"reason": ..., "since": ...}`` while the circuit is open."""


def _held_back(client: Any) -> Iterator[Metric]:
    paused = GaugeMetricFamily(
        PREFIX + "account_paused",
        "1 while the account's deliveries to the destination are paused (401/403), with the reason.",
        labels=["account", "destination", "reason"],
    )
    circuit = GaugeMetricFamily(
        PREFIX + "circuit_open",
        "1 while the circuit of the account and destination is open (sustained failures).",
        labels=["account", "destination"],
    )
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(PAUSED)
    pipe.hgetall(CIRCUIT)
    held, opened = pipe.execute()
    for name, value in sorted(held.items()):
        account, _, destination = name.decode().partition("|")
        paused.add_metric([account, destination, str(_json(value).get("reason", ""))], 1)
    for name in sorted(opened):
        account, _, destination = name.decode().partition("|")
        circuit.add_metric([account, destination], 1)
    yield from (paused, circuit)


def _json(value: bytes) -> dict[str, Any]:
    try:
        found = json.loads(value)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}
