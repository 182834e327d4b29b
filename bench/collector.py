"""The collector's benchmark: throughput with real Segment batches, and 5,000 idle connections.

    .venv/bin/python -m bench.collector [--workers 2] [--idle 5000] [--seconds 15]
    scripts/bench collector          # the same, through the usual installer

Starts a private redis-server and ``attentive-relay collect --workers N`` as the operator
would, then measures:

- **throughput**: POST /v1/batch with the exact bodies segment-analytics-python sends
  (100 messages a batch, its default; every message with its own messageId), from
  ``--clients`` concurrent connections for ``--seconds``. Reported as messages per second
  and as messages per CPU-second of the collector's processes (their user + system time
  from /proc), which is the figure per core: the load generator shares the machine;
- **idle connections**: ``--idle`` connections opened and left silent; while they are open,
  the memory of all collector processes together (RSS summed, and PSS summed, which counts
  shared pages once, as the kernel's memory cgroup does) and the latency of 20 normal
  POST /v1/batch requests; then whether the idle ones were closed by the head deadline.

Prints the figures and writes JSON to bench/results/collector-*.json. Every loop is bounded
in count and time; traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from segment.analytics import Client
from segment.analytics.request import DatetimeSerializer

from bench.run import machine, write_results
from worker.collector.server import HEAD_TIMEOUT_S
from worker.local.processes import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-write-key"
BATCH = 100  # segment-analytics-python's upload_size
TRAITS = {"phone": "(415) 555-2671", "email": "jane@example.com"}


def segment_batches(count: int) -> list[bytes]:
    """``count`` request bodies, each exactly as segment-analytics-python's `request.post`
    builds it: its own message dicts (``send=False`` hands them back), plus sentAt and writeKey."""
    client = Client(KEY, send=False)
    bodies = []
    for b in range(count):
        messages = []
        for i in range(BATCH):
            user = f"u-{b}-{i}"
            kind = i % 4
            if kind == 0:
                _, msg = client.track(
                    user, "Product Viewed", {"product_id": f"p-{i}", "price": 19.99}, context={"traits": TRAITS}
                )
            elif kind == 1:
                _, msg = client.page(user, name="Home", properties={"path": "/", "url": "https://shop.example/"})
            elif kind == 2:
                _, msg = client.identify(user, {**TRAITS, "plan": "gold"})
            else:
                _, msg = client.track(user, "Coupon Entered", {"coupon": "SAVE"}, context={"traits": TRAITS})
            messages.append(msg)
        body = {"batch": messages, "sentAt": datetime.now(UTC).isoformat(), "writeKey": KEY}
        bodies.append(json.dumps(body, cls=DatetimeSerializer).encode())
    return bodies


HEADERS = {"Content-Type": "application/json", "User-Agent": "analytics-python/bench"}


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (supervisor, workers, multiprocessing's tracker)."""
    found = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split():
                found += process_tree(int(child))
    except OSError:
        pass
    return found


def memory_mb(pids: list[int]) -> dict[str, float]:
    """RSS and PSS summed over ``pids``, in MB (PSS from smaps_rollup counts shared pages once)."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                name, _, value = line.partition(":")
                if name == "Rss":
                    rss += int(value.split()[0])
                elif name == "Pss":
                    pss += int(value.split()[0])
        except OSError:
            continue
    return {"rss_mb": round(rss / 1024, 1), "pss_mb": round(pss / 1024, 1), "processes": len(pids)}


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except OSError:
            continue
    return total


class CollectorProcess:
    """``attentive-relay collect`` in a child process, on a free port, against ``redis_url``."""

    def __init__(self, redis_url: str, workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "REDIS_URL": redis_url, "COLLECTOR_WRITE_KEYS": KEY, "ATTENTIVE_LOG_FORMAT": "text"}
        cmd = [str(ROOT / ".venv/bin/attentive-relay"), "collect", "--port", str(self.port), "--workers", str(workers)]
        if not Path(cmd[0]).exists():
            cmd[0:1] = [sys.executable, "-m", "worker.cli"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                r = httpx.options(self.url + "/v1/batch", timeout=1)
                if r.status_code == 204 and len(self.pids()) >= workers + (workers > 1):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("the collector did not start within 30 s")

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


async def _throughput(url: str, bodies: list[bytes], clients: int, seconds: float) -> dict[str, Any]:
    queue = list(reversed(bodies))
    accepted = statuses_bad = sent = 0
    failures: dict[str, int] = {}
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal accepted, statuses_bad, sent
        async with httpx.AsyncClient(auth=(KEY, ""), headers=HEADERS, timeout=30) as http:
            while queue and time.monotonic() < deadline:
                body = queue.pop()
                t0 = time.perf_counter()
                r = await http.post(url + "/v1/batch", content=body)
                latencies.append(time.perf_counter() - t0)
                sent += 1
                if r.status_code == 200:
                    accepted += BATCH
                else:
                    statuses_bad += 1
                    reason = f"{r.status_code} {r.json().get('message') or r.json().get('problems', [''])[0]}"
                    failures[reason] = failures.get(reason, 0) + 1

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.monotonic() - started
    return {
        "batches": sent,
        "messages": accepted,
        "failed_batches": statuses_bad,
        "failures": failures,
        "elapsed_s": elapsed,
        "batch_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
    }


def throughput(collector: CollectorProcess, bodies: list[bytes], clients: int, seconds: float) -> dict[str, Any]:
    pids = collector.pids()
    cpu0 = cpu_seconds(pids)
    result = asyncio.run(_throughput(collector.url, bodies, clients, seconds))
    cpu = cpu_seconds(pids) - cpu0
    elapsed = result.pop("elapsed_s")
    return {
        **result,
        "messages_per_s": round(result["messages"] / elapsed),
        "collector_cpu_s": round(cpu, 2),
        "messages_per_cpu_s": round(result["messages"] / cpu) if cpu else None,
        "batch_size": BATCH,
        "clients": clients,
        "seconds": round(elapsed, 1),
    }


def idle_connections(collector: CollectorProcess, count: int, bodies: list[bytes]) -> dict[str, Any]:
    """Open ``count`` silent connections; memory and normal-request latency while they are open."""
    pids = collector.pids()
    before = memory_mb(pids)
    socks: list[socket.socket] = []
    opened_at = time.monotonic()
    try:
        for _ in range(count):
            if time.monotonic() - opened_at > HEAD_TIMEOUT_S / 2:
                break  # opening must end well inside the head deadline, or the first ones are gone
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", collector.port))
            socks.append(s)
        time.sleep(0.5)  # let the server accept them all
        open_for = time.monotonic() - opened_at
        latencies = []
        with httpx.Client(auth=(KEY, ""), headers=HEADERS, timeout=10) as http:
            for body in bodies[:20]:
                t0 = time.perf_counter()
                r = http.post(collector.url + "/v1/batch", content=body)
                latencies.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
        during = memory_mb(collector.pids())
        still_open_s = time.monotonic() - opened_at
        # after the head deadline the server must have closed every one of them
        time.sleep(max(0.0, opened_at + HEAD_TIMEOUT_S + 3 - time.monotonic()))
        closed = 0
        for s in socks:
            try:
                s.setblocking(True)
                s.settimeout(0.01)
                closed += s.recv(1) == b""
            except (ConnectionResetError, TimeoutError, BlockingIOError, OSError):
                closed += 0
        after = memory_mb(collector.pids())
    finally:
        for s in socks:
            s.close()
    return {
        "idle_connections": len(socks),
        "opened_in_s": round(open_for, 2),
        "memory_before": before,
        "memory_with_idle": during,
        "memory_after_deadline": after,
        "post_batch_ms": {
            "p50": round(statistics.median(latencies) * 1000, 1),
            "max": round(max(latencies) * 1000, 1),
            "n": len(latencies),
            "batch_size": BATCH,
        },
        "measured_within_s": round(still_open_s, 1),
        "closed_by_head_deadline": closed,
        "head_timeout_s": HEAD_TIMEOUT_S,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the idle sockets live in this process too
    results: dict[str, Any] = {"machine": machine(), "when": datetime.now(UTC).isoformat(), "workers": args.workers}
    bodies = segment_batches(max(60, int(args.seconds * 60)))
    redis_server = RedisServer().start()
    try:
        collector = CollectorProcess(redis_server.url, args.workers)
        try:
            results["idle"] = idle_connections(collector, args.idle, bodies[-20:])
            print("idle:", json.dumps(results["idle"]), flush=True)
            results["throughput"] = throughput(collector, bodies[:-20], args.clients, args.seconds)
            print("throughput:", json.dumps(results["throughput"]), flush=True)
        finally:
            collector.stop()
    finally:
        redis_server.stop()
    idle, tp = results["idle"], results["throughput"]
    results["done"] = {
        "post_under_1s_with_idle": idle["post_batch_ms"]["max"] < 1000,
        "memory_under_150mb_rss": idle["memory_with_idle"]["rss_mb"] < 150,
        "memory_under_150mb_pss": idle["memory_with_idle"]["pss_mb"] < 150,
    }
    print(
        f"\n{args.workers} workers: {tp['messages_per_s']} messages/s, {tp['messages_per_cpu_s']} per collector"
        f" CPU-second; {idle['idle_connections']} idle connections: RSS {idle['memory_with_idle']['rss_mb']} MB,"
        f" PSS {idle['memory_with_idle']['pss_mb']} MB, POST /v1/batch max {idle['post_batch_ms']['max']} ms"
    )
    write_results(Path(args.out), results, "collector-")
    return 0


if __name__ == "__main__":
    sys.exit(main())
