"""The benchmark: attentive-relay's pipeline against a plain Celery + httpx task, side by side.

    scripts/bench            # or: .venv/bin/python -m bench.run [--quick]

Starts a private redis-server (or uses --redis-url), the sandbox in its own process, and
worker processes, then measures rate-limit fidelity, throughput and CPU per job, the rate one
process reaches against a 100 ms API, enqueue cost, end-to-end latency at a steady 100 jobs/s,
and memory. Prints a table and writes JSON to bench/results/. Every wait is bounded; traffic
goes only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from producers.producer import Producer
from producers.settings import Settings
from worker.counters import stats
from worker.local.processes import RedisServer, WorkerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
LIMIT = 150
#: Threads for the latency-bound run: 150/s x 0.1 s is 15 calls in flight, plus room to queue for slots.
CONCURRENCY = 24
#: attentive-relay, and the baseline task in two variants: httpx.post per call, or a shared client.
SYSTEMS = ("relay", "plain", "tuned")
#: Pool and concurrency for the unlimited-throughput run: each system's own best on 2 cores.
POOLS = {"relay": ("threads", 8), "plain": ("prefork", 2), "tuned": ("prefork", 2)}


def job(i: int) -> dict[str, Any]:
    return {
        "kind": "custom_event",
        "type": "Bench Event",
        "user": {"phone": "+14155552671", "email": "b@example.com"},
        "properties": {"n": i, "sku": "sku-1", "price": 19.99},
    }


#: Attentive's limits per endpoint for one token: five at 150/s, identity at 10/s.
QUOTA = {
    "custom_event": 150,
    "custom_attributes": 150,
    "product_view": 150,
    "add_to_cart": 150,
    "purchase": 150,
    "identity": 10,
}
QUOTA_CONCURRENCY = 8


def quota_job(kind: str, i: int) -> dict[str, Any]:
    """A valid job of ``kind``, numbered ``i``."""
    user = {"phone": "+14155552671", "email": f"q{i}@example.com"}
    item = {"productId": f"p-{i % 50}", "productVariantId": f"v-{i % 50}", "price": [{"value": 19.99}]}
    if kind == "custom_event":
        return job(i)
    if kind == "custom_attributes":
        return {"kind": kind, "user": user, "properties": {"tier": "gold", "n": i}}
    if kind == "identity":
        return {"kind": kind, "clientUserId": f"customer-{i}", "email": user["email"]}
    extra = {"orderId": f"o-{i}"} if kind == "purchase" else {}
    return {"kind": kind, "user": user, "items": [item], **extra}


def purchase_job(account: int, i: int) -> dict[str, Any]:
    item = {"productId": "p1", "productVariantId": "v1", "price": [{"value": 19.99, "currency": "USD"}]}
    return {"kind": "purchase", "user": {"phone": "+14155552671"}, "orderId": f"order-{account}-{i}", "items": [item]}


def body_of(i: int) -> dict[str, Any]:
    return {k: v for k, v in job(i).items() if k != "kind"}


class Bench:
    def __init__(self, redis_url: str, quick: bool) -> None:
        self.redis_url = redis_url
        self.client = redis.Redis.from_url(redis_url)
        self.quick = quick
        self.workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
        port = free_port()
        self.sandbox_url = f"http://127.0.0.1:{port}"
        self.sandbox = subprocess.Popen(
            # Any token: the slow-API runs send for 12 accounts, each with its own.
            [sys.executable, "-m", "worker.cli", "sandbox", "--port", str(port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(self.sandbox_url + "/__sandbox/stats", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        self.http = httpx.Client(base_url=self.sandbox_url, timeout=60)

    def close(self) -> None:
        self.sandbox.terminate()
        self.sandbox.wait(10)

    # -- helpers -----------------------------------------------------------------------------
    def reset(self, rate: int = LIMIT, latency_ms: int = 0) -> None:
        self.client.flushdb()
        self.http.post("/__sandbox/reset")
        self.http.post("/__sandbox/config", json={"rate": rate, "latency_ms": latency_ms, "fail_rate": 0})

    def records(self) -> list[dict[str, Any]]:
        return self.http.get("/__sandbox/requests", headers={"Authorization": f"Bearer {TOKEN}"}).json()

    def settings(self, **overrides: Any) -> Settings:
        return Settings(
            redis_url=self.redis_url, attentive_base_url=self.sandbox_url, attentive_api_token=TOKEN, **overrides
        )

    def relay_worker(self, name: str, pool: str, concurrency: int, **overrides: Any) -> WorkerProcess:
        settings = self.settings(**overrides)
        env = {
            k.upper(): str(v.get_secret_value() if hasattr(v, "get_secret_value") else v)
            for k, v in settings.model_dump().items()
            if v is not None and not isinstance(v, dict)
        }
        return WorkerProcess(
            env=env, log_path=self.workdir / f"{name}.log", name=name, pool=pool, concurrency=concurrency
        ).start()

    def baseline_worker(
        self, variant: str, name: str, pool: str, concurrency: int, rate_limit: str | None
    ) -> WorkerProcess:
        env = {
            "BASELINE_VARIANT": variant,
            "REDIS_URL": self.redis_url,
            "ATTENTIVE_BASE_URL": self.sandbox_url,
            "ATTENTIVE_API_TOKEN": TOKEN,
            "BASELINE_RATE_LIMIT": rate_limit or "",
            "PYTHONPATH": str(ROOT),
        }
        return WorkerProcess(
            env=env,
            log_path=self.workdir / f"{name}.log",
            name=name,
            pool=pool,
            concurrency=concurrency,
            app="bench.baseline",
            queue="baseline",
        ).start()

    def send_baseline(self, n: int) -> None:
        from bench.baseline import app

        app.conf.broker_url = self.redis_url
        with app.producer_or_acquire() as producer:
            for i in range(n):
                app.send_task(
                    "baseline.deliver", args=["/v1/events/custom", body_of(i)], queue="baseline", producer=producer
                )

    def wait_ok(self, n: int, timeout: float) -> list[dict[str, Any]]:
        """Wait until ``n`` requests were answered 200, or nothing has moved for 10 s."""
        deadline = time.monotonic() + timeout
        last, still_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            records = self.records()
            ok = sum(r["status"] == 200 for r in records)
            if ok >= n:
                return records
            if len(records) != last:
                last, still_since = len(records), time.monotonic()
            elif time.monotonic() - still_since > 10:
                break
            time.sleep(0.5)
        return self.records()

    # -- scenarios ---------------------------------------------------------------------------
    def fidelity(self, system: str) -> dict[str, Any]:
        n = 1500 if self.quick else 3000
        self.reset(rate=LIMIT)
        if system == "relay":
            workers = [self.relay_worker(f"fid{i}", "prefork", 1) for i in range(4)]
            Producer(self.settings(), self.client).enqueue_many(job(i) for i in range(n))
        else:
            workers = [self.baseline_worker(system, f"{system}{i}", "prefork", 1, f"{LIMIT}/s") for i in range(4)]
            self.send_baseline(n)
        records = self.wait_ok(n, n / LIMIT * 3 + 30)
        for w in workers:
            w.stop()
        ok = sorted(r["done"] for r in records if r["status"] == 200)
        window = (ok[-1] - ok[0]) if len(ok) > 1 else float("nan")
        per_second: dict[int, int] = {}
        for t in ok:
            per_second[int(t)] = per_second.get(int(t), 0) + 1
        rate = (len(ok) - 1) / window if window else 0.0
        return {
            "jobs": n,
            "delivered": len(ok),
            "http_429": sum(r["status"] == 429 for r in records),
            "achieved_per_s": round(rate, 1),
            "fraction_of_limit": round(rate / LIMIT, 3),
            "busiest_second": max(per_second.values()) if per_second else 0,
            "workers": "4 processes (prefork, concurrency 1 each)",
        }

    def throughput(self, system: str, pool: str, concurrency: int) -> dict[str, Any]:
        n = 2000 if self.quick else 5000
        self.reset(rate=10**9)
        if system == "relay":
            worker = self.relay_worker("tp", pool, concurrency, attentive_rate_limit=10**6)
            Producer(self.settings(), self.client).enqueue_many(job(i) for i in range(n))
        else:
            worker = self.baseline_worker(system, f"tp{system}", pool, concurrency, None)
            self.send_baseline(n)
        cpu0, t0 = worker.cpu_seconds(), time.monotonic()
        records = self.wait_ok(n, 300)
        elapsed, cpu = time.monotonic() - t0, worker.cpu_seconds() - cpu0
        rss = worker.peak_rss_mb()
        worker.stop()
        ok = sum(r["status"] == 200 for r in records)
        return {
            "jobs": n,
            "delivered": ok,
            "per_s": round(ok / elapsed, 1),
            "worker_cpu_ms_per_job": round(cpu * 1000 / max(ok, 1), 3),
            "per_worker_cpu_s": round(ok / cpu, 1) if cpu else None,
            "worker_peak_rss_mb": round(rss, 1),
            "worker": f"1 process, pool={pool}, concurrency={concurrency}",
        }

    def latency_bound(self, system: str = "relay") -> dict[str, Any]:
        n = 900 if self.quick else 1500
        if system != "relay":
            n = 300  # the baselines manage a few per second here: keep their runs short
        self.reset(rate=LIMIT, latency_ms=100)
        if system == "relay":
            worker = self.relay_worker("lat", "threads", CONCURRENCY)
            Producer(self.settings(), self.client).enqueue_many(job(i) for i in range(n))
        else:
            worker = self.baseline_worker(system, f"lat{system}", "threads", CONCURRENCY, f"{LIMIT}/s")
            self.send_baseline(n)
        records = self.wait_ok(n, 60)
        worker.stop()
        ok = sorted(r["done"] for r in records if r["status"] == 200)
        rate = (len(ok) - 1) / (ok[-1] - ok[0]) if len(ok) > 1 else 0.0
        return {
            "jobs": n,
            "delivered": len(ok),
            "per_s": round(rate, 1),
            "fraction_of_limit": round(rate / LIMIT, 3),
            "http_429": sum(r["status"] == 429 for r in records),
            "worker": f"1 process, pool=threads, concurrency={CONCURRENCY}",
        }

    def quota(self) -> dict[str, Any]:
        """One worker process against a 100 ms API that enforces 150/s per endpoint (identity
        10/s), with a backlog of all six kinds: the fraction of the combined quota it keeps."""
        seconds = 10 if self.quick else 20
        per_kind = {kind: int(limit * (seconds + 4)) for kind, limit in QUOTA.items()}
        self.reset(rate=LIMIT, latency_ms=100)
        jobs = [quota_job(kind, i) for i in range(max(per_kind.values())) for kind in QUOTA if i < per_kind[kind]]
        producer = Producer(self.settings(), self.client)
        for start in range(0, len(jobs), 1000):
            producer.enqueue_many(jobs[start : start + 1000])
        worker = self.relay_worker("quota", "threads", QUOTA_CONCURRENCY)
        cpu0, t0 = worker.cpu_seconds(), time.monotonic()
        time.sleep(seconds + 2)
        cpu, elapsed = worker.cpu_seconds() - cpu0, time.monotonic() - t0
        records = self.records()
        worker.stop()
        ok = sorted(r["done"] for r in records if r["status"] in (200, 202))
        # The first and last second are ramp-up and the moment of measuring: count the rest.
        start, end = ok[0] + 1, ok[0] + seconds
        in_window = sum(start <= t < end for t in ok)
        combined = sum(QUOTA.values())
        per_s = in_window / (end - start)
        return {
            "jobs": len(jobs),
            "delivered": len(ok),
            "window_s": end - start,
            "per_s": round(per_s, 1),
            "combined_quota_per_s": combined,
            "fraction_of_quota": round(per_s / combined, 3),
            "http_429": sum(r["status"] == 429 for r in records),
            "worker_cpu_s": round(cpu, 1),
            "worker_cpu_fraction": round(cpu / elapsed, 2),
            "worker": f"1 process, pool=threads, concurrency={QUOTA_CONCURRENCY}",
        }

    def under_load(self, scenario: str) -> dict[str, Any]:
        """Issue 15's slow-API scenarios: purchases (no externalEventId, so a second send is an
        order counted twice) from 12 accounts, one threads-pool worker, an API that answers
        after several seconds. Counts the orders the API accepted more than once."""
        concurrency, per_account, latency_s, lease_s, timeout_s = {
            "6s": (48, 128, 6.0, 60.0, 10.0),
            "4s": (24, 64, 4.0, 15.0, 5.0),
        }[scenario]
        if self.quick:
            per_account //= 2
        accounts = {f"brand-{b}": {"token": f"{TOKEN}-{b}"} for b in range(1, 12)}
        self.reset(rate=10**6, latency_ms=int(latency_s * 1000))
        overrides = {
            "attentive_accounts": json.dumps(accounts),
            "attentive_lease_s": lease_s,
            "attentive_timeout_s": timeout_s,
        }
        producer = Producer(self.settings(**overrides), self.client)
        n = 12 * per_account
        for b in range(12):
            account = {"account": f"brand-{b}"} if b else {}
            producer.enqueue_many(purchase_job(b, i) | account for i in range(per_account))
        worker = self.relay_worker("load", "threads", concurrency, **overrides)
        t0 = time.monotonic()
        deadline = t0 + n * latency_s / 10 + 120
        while time.monotonic() < deadline:
            s = stats(self.client, self.settings(**overrides))
            if s["delivered"] + sum(s["dead_letter"].values()) >= n:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - t0
        worker.stop()
        s = stats(self.client, self.settings(**overrides))
        accepted: dict[str, int] = {}
        for r in self.records():
            if r["status"] == 200:
                order = r["body"]["orderId"]
                accepted[order] = accepted.get(order, 0) + 1
        return {
            "purchases": n,
            "ended": s["delivered"] + sum(s["dead_letter"].values()),
            "delivered": s["delivered"],
            "accepted_twice": sum(1 for c in accepted.values() if c > 1),
            "seconds": round(elapsed, 1),
            "worker": f"1 process, pool=threads, concurrency={concurrency}; API {latency_s:g} s, "
            f"lease {lease_s:g} s, timeout {timeout_s:g} s",
        }

    def isolation(self, latency_s: float) -> dict[str, Any]:
        """Brand B's 40 custom events queued behind the default account's backlog of purchases
        against a slow API: how long after enqueue they reach the API."""
        accounts = {"brand-b": {"token": f"{TOKEN}-b"}}
        self.reset(rate=10**6, latency_ms=int(latency_s * 1000))
        overrides: dict[str, Any] = {
            "attentive_accounts": json.dumps(accounts),
            "attentive_timeout_s": max(10.0, latency_s + 2),
        }
        overrides["attentive_lease_s"] = max(60.0, overrides["attentive_timeout_s"] + 10)
        settings = self.settings(**overrides)
        producer = Producer(settings, self.client)
        producer.enqueue_many(purchase_job(0, i) for i in range(1000))
        worker = self.relay_worker("iso", "threads", CONCURRENCY, **overrides)
        deadline = time.monotonic() + 60
        while len(self.records()) < 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        queued_at = time.time()
        b_job = {"kind": "custom_event", "type": "B", "user": {"phone": "+14155552671"}, "account": "brand-b"}
        producer.enqueue_many([b_job] * 40)
        deadline = time.monotonic() + 60
        arrived: list[float] = []
        while time.monotonic() < deadline:
            arrived = [r["at"] for r in self.records() if (r["body"] or {}).get("type") == "B"]
            if len(arrived) >= 40:
                break
            time.sleep(0.1)
        worker.stop()
        return {
            "api_latency_s": latency_s,
            "b_events": len(arrived),
            "b_first_at_api_s": round(min(arrived) - queued_at, 2) if arrived else None,
            "b_last_at_api_s": round(max(arrived) - queued_at, 2) if arrived else None,
            "worker": f"1 process, pool=threads, concurrency={CONCURRENCY}; 1,000 purchases queued first",
        }

    def enqueue_cost(self) -> dict[str, Any]:
        from bench.baseline import app

        n = 2000 if self.quick else 5000
        self.reset()
        producer = Producer(self.settings(), self.client)

        def measure(fn: Callable[[int], object]) -> float:
            for i in range(200):
                fn(i)
            start = time.process_time()
            for i in range(n):
                fn(i)
            return (time.process_time() - start) / n * 1e6

        relay_us = measure(lambda i: producer.enqueue(job(i)))
        app.conf.broker_url = self.redis_url
        with app.producer_or_acquire() as p:
            celery_us = measure(
                lambda i: app.send_task(
                    "baseline.deliver", args=["/v1/events/custom", body_of(i)], queue="bench-send", producer=p
                )
            )
        self.client.flushdb()
        return {
            "calls": n,
            "relay_enqueue_cpu_us": round(relay_us, 1),
            "celery_send_task_cpu_us": round(celery_us, 1),
            "note": "relay_enqueue validates (phone normalization included) and writes the job record too",
        }

    def end_to_end(self) -> dict[str, Any]:
        seconds, rate = (6, 100) if self.quick else (15, 100)
        self.reset(rate=LIMIT)
        worker = self.relay_worker("e2e", "threads", 16)
        producer = Producer(self.settings(), self.client)
        start = time.monotonic()
        for i in range(seconds * rate):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            producer.enqueue(job(i))
        records = self.wait_ok(seconds * rate, 60)
        worker.stop()
        lat = sorted(
            (r["done"] - datetime.fromisoformat(r["body"]["occurredAt"].replace("Z", "+00:00")).timestamp()) * 1000
            for r in records
            if r["status"] == 200
        )
        return {
            "jobs": seconds * rate,
            "rate_per_s": rate,
            "p50_ms": round(statistics.median(lat), 1),
            "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 1),
            "max_ms": round(lat[-1], 1),
            "worker": "1 process, pool=threads, concurrency=16",
        }

    def memory(self) -> dict[str, Any]:
        n = 20_000 if self.quick else 100_000
        self.reset()
        before = self.client.info("memory")["used_memory"]
        producer = Producer(self.settings(), self.client)
        for start in range(0, n, 1000):
            producer.enqueue_many(job(i) for i in range(start, start + 1000))
        after = self.client.info("memory")["used_memory"]
        assert stats(self.client, producer.settings)["queued"] == n
        self.client.flushdb()
        return {"backlog_jobs": n, "redis_bytes_per_job": round((after - before) / n)}


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = int(
        next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def table(results: dict[str, Any]) -> str:
    """The figures side by side; ratios are against the plain baseline, then the tuned one."""
    f, t, lb, e, q, m, qu = (
        results[k] for k in ("fidelity", "throughput", "latency_bound", "enqueue", "end_to_end", "memory", "quota")
    )

    def per_cpu(system: str) -> float:
        return t[system]["per_worker_cpu_s"] or 0.0

    rows = [
        ("rate-limit fidelity: fraction of 150/s", *(f"{f[s]['fraction_of_limit']:.3f}" for s in SYSTEMS), ""),
        ("rate-limit fidelity: 429s received", *(str(f[s]["http_429"]) for s in SYSTEMS), ""),
        ("throughput, no limit (deliveries/s)", *(str(t[s]["per_s"]) for s in SYSTEMS), ""),
        (
            "deliveries per worker CPU-second",
            *(str(per_cpu(s)) for s in SYSTEMS),
            f"{per_cpu('relay') / per_cpu('plain'):.1f}x / {per_cpu('relay') / per_cpu('tuned'):.1f}x",
        ),
        (
            "worker CPU ms per delivered job",
            *(str(t[s]["worker_cpu_ms_per_job"]) for s in SYSTEMS),
            f"relay/tuned {t['relay']['worker_cpu_ms_per_job'] / t['tuned']['worker_cpu_ms_per_job']:.2f}",
        ),
        (
            "one process vs 100 ms API (deliveries/s)",
            *(str(lb[s]["per_s"]) for s in SYSTEMS),
            f"relay at {lb['relay']['fraction_of_limit']:.3f} of 150/s",
        ),
        (
            "quota run: 1 process, 6 kinds, 100 ms API (/s)",
            f"{qu['per_s']} = {qu['fraction_of_quota']:.3f} of {qu['combined_quota_per_s']}",
            "",
            "",
            f"429s {qu['http_429']}, worker CPU {qu['worker_cpu_fraction']:.2f} of a core",
        ),
        (
            "enqueue CPU µs per call (baseline: send_task)",
            f"{e['relay_enqueue_cpu_us']}",
            f"{e['celery_send_task_cpu_us']}",
            f"{e['celery_send_task_cpu_us']}",
            f"{e['celery_send_task_cpu_us'] / e['relay_enqueue_cpu_us']:.1f}x",
        ),
        ("end-to-end latency at 100 jobs/s", f"p50 {q['p50_ms']} / p99 {q['p99_ms']} ms", "", "", ""),
        ("worker peak RSS, throughput run (MiB)", *(str(t[s]["worker_peak_rss_mb"]) for s in SYSTEMS), ""),
        (f"Redis bytes per queued job ({m['backlog_jobs']:,})", str(m["redis_bytes_per_job"]), "", "", ""),
    ]
    head = ("measure", "attentive-relay", "baseline plain", "baseline tuned", "relay vs plain / tuned")
    width = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, width, strict=True))]
    out.append("-" * len(out[0]))
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, width, strict=True)) for r in rows]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (about half the time)")
    parser.add_argument("--redis-url", help="use this Redis (it is FLUSHDB'd!) instead of a private one")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--only", help="comma-separated steps to run (default: all)")
    args = parser.parse_args()
    server = None if args.redis_url else RedisServer().start()
    bench = Bench(args.redis_url or server.url, args.quick)  # type: ignore[union-attr]
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "when": datetime.now(UTC).isoformat(), "quick": args.quick}
    try:
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("fidelity", lambda: {s: bench.fidelity(s) for s in SYSTEMS}),
            ("throughput", lambda: {s: bench.throughput(s, *POOLS[s]) for s in SYSTEMS}),
            ("latency_bound", lambda: {s: bench.latency_bound(s) for s in SYSTEMS}),
            ("quota", bench.quota),
            ("enqueue", bench.enqueue_cost),
            ("end_to_end", bench.end_to_end),
            ("memory", bench.memory),
            ("under_load", lambda: {sc: bench.under_load(sc) for sc in ("6s", "4s")}),
            ("isolation", lambda: {f"{lat:g}s": bench.isolation(lat) for lat in (6.0, 9.5)}),
        ]
        if args.only:
            wanted = set(args.only.split(","))
            steps = [(name, step) for name, step in steps if name in wanted]
        for name, step in steps:
            t0 = time.monotonic()
            results[name] = step()
            print(f"{name}: {json.dumps(results[name])} ({time.monotonic() - t0:.0f} s)", flush=True)
    finally:
        bench.close()
        if server is not None:
            server.stop()
    results["seconds"] = round(time.monotonic() - started)
    if not args.only:
        print()
        print(table(results))
    print(f"\n{results['machine']['cores']} cores, {results['machine']['cpu']}; {results['seconds']} s")
    # A run of some steps never replaces the whole run's latest.json.
    write_results(Path(args.out), results, prefix="partial-" if args.only else "")
    return 0


def write_results(out: Path, results: dict[str, Any], prefix: str = "") -> None:
    """``results`` as JSON in ``out``: ``<prefix>latest.json`` and a timestamped copy."""
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2)
    (out / f"{prefix}latest.json").write_text(text)
    (out / f"{prefix}{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
