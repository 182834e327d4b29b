"""Bulk replay at scale (issue 17, finding 1): ``attentive-relay dlq replay --all`` as a real
process, interrupted once midway and run again, while fresh jobs of the same account and kind
keep coming, with real ``celery worker`` processes and a sandbox that answers 429 past its rate.

Every replayed job reaches the sandbox exactly once, none draws a 429, every fresh job reaches
it within the API's latency plus 1 s of being enqueued, and both runs show their progress.

The issue's run is 100,000 dead letters (``ATTENTIVE_REPLAY_JOBS=100000``: several minutes);
the suite runs 1,000. The sandbox's rate (and the relay's rate limit with it, so the limiter is
what paces the replay) is ``ATTENTIVE_REPLAY_RATE``, 300/s unless set.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from functools import partial
from typing import IO, Any

from producers.producer import Producer
from producers.settings import Settings
from producers.store import keys, lua
from producers.store.message import job_of, tickets_in
from worker.jobstore import Claim, JobStore
from worker.sandbox.server import Sandbox

from conftest import TOKEN, env_for, make_settings, wait_for

JOBS = int(os.environ.get("ATTENTIVE_REPLAY_JOBS", "1000"))
RATE = int(os.environ.get("ATTENTIVE_REPLAY_RATE", "300"))
LATENCY_MS = 20
FRESH_EVERY_S = 0.1
FILL_CHUNK = 1000


def replayed_event(i: int) -> dict[str, Any]:
    return {"kind": "custom_event", "type": f"Replayed {i}", "user": {"email": f"r{i}@example.org"}}


def _dead_letter(store: JobStore, claim: Claim, now_ms: int, entry: dict[str, Any], pipe: Any) -> bool:
    return store.dead_letter(claim, now_ms, "server_error", entry, pipe)


def fill(client: Any, settings: Settings, n: int) -> None:
    """``n`` dead letters, written as the relay writes them: enqueued by the producer (a batch
    message per 32 jobs), claimed a message at a time and dead-lettered by the job store, a
    pipeline per chunk; no worker is running, so the messages are taken here."""
    producer = Producer(settings, client)
    store = JobStore(client, settings.attentive_queue, 60_000, settings.job_retention_ms, 3_600_000)
    for start in range(0, n, FILL_CHUNK):
        producer.enqueue_many([replayed_event(i) for i in range(start, min(n, start + FILL_CHUNK))])
        messages = client.lrange(settings.attentive_queue, 0, -1)
        client.delete(settings.attentive_queue)
        now_ms = int(time.time() * 1000)
        claims: list[Claim] = []
        for raw in messages:
            message = json.loads(raw)
            pairs = [(job_of(t), t) for t in tickets_in(raw)]
            claims += [c for c in store.claim_many(message["headers"]["id"], pairs, now_ms) if isinstance(c, Claim)]
        stamp = datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        steps = []
        for claim in claims:
            entry = {
                "job_id": claim.job_id,
                "job": json.loads(claim.job_json),
                "reason": "server_error",
                "detail": "HTTP 503",
                "status": 503,
                "response": "",
                "attempts": [{"at": stamp, "attempt": 1, "status": 503}],
                "first_seen": stamp,
                "last_seen": stamp,
                "round": claim.round,
            }
            steps.append(partial(_dead_letter, store, claim, now_ms, entry))
        assert all(lua.run_pipeline(client, steps))
    assert client.zcard(keys.DEAD_INDEX) == n


class ReplayProcess:
    """``attentive-relay dlq replay --all --json`` in a process of its own; its stderr lines are
    collected as they come."""

    def __init__(self, settings: Settings) -> None:
        env = {**os.environ, **env_for(settings), "NO_COLOR": "1", "COLUMNS": "200"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "dlq", "replay", "--all", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.first_line_s = float("nan")
        """Seconds from the start to its first progress line (reading and sorting the ids)."""
        self._started = time.monotonic()
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if not self.lines:
                self.first_line_s = time.monotonic() - self._started
            self.lines.append(line.rstrip("\n"))

    def progress(self) -> list[str]:
        return [line for line in self.lines if line.startswith("replay: ") and " entries done" in line]

    def finish(self, timeout: float) -> tuple[int, str]:
        """Exit status and stdout, once it has ended (killed after ``timeout``)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._reader.join(5)
        assert self.proc.stdout is not None
        return self.proc.returncode, self.proc.stdout.read()


class FreshJobs:
    """Enqueues a fresh job of the replayed account and kind every `FRESH_EVERY_S` in a thread,
    noting when each was enqueued."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.enqueued: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set() and n < 100_000:
            name = f"Fresh {n}"
            at = time.time()
            self.producer.enqueue({"kind": "custom_event", "type": name, "user": {"email": f"f{n}@example.org"}})
            self.enqueued[name] = at
            n += 1
            next_at += FRESH_EVERY_S
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> FreshJobs:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def test_a_bulk_replay_interrupted_and_resumed_sends_each_once_inside_the_limits(
    redis_server, redis_client, start_worker
):
    with Sandbox(port=0, token=TOKEN, rate=RATE, latency_ms=LATENCY_MS) as sandbox:
        sent = Sent(sandbox)
        settings = make_settings(redis_server.url, sandbox.url, attentive_rate_limit=RATE)
        fill_started = time.monotonic()
        fill(redis_client, settings, JOBS)
        fill_s = time.monotonic() - fill_started
        memory_full = int(redis_client.info("memory")["used_memory"])
        for name in ("w1", "w2"):
            start_worker(name, concurrency=8, settings_=settings, pool="threads")
        producer = Producer(settings, redis_client)
        with FreshJobs(producer) as fresh:
            wait_for(lambda: sandbox.state.requests, 30, "the workers to deliver a fresh job")
            started, started_at = time.monotonic(), time.time()
            first = ReplayProcess(settings)
            wait_for(lambda: redis_client.zcard(keys.DEAD_INDEX) <= JOBS // 2, 30 + JOBS / 50, "half replayed", 0.05)
            first.proc.send_signal(signal.SIGINT)
            first_status, _ = first.finish(30)
            left = redis_client.zcard(keys.DEAD_INDEX)
            second = ReplayProcess(settings)
            second_status, second_out = second.finish(120 + JOBS / 50)
            wait_for(lambda: sent.count("Replayed") >= JOBS, 60, "every replayed job sent", 0.05)
            replay_s = time.monotonic() - started
        wait_for(lambda: sent.count("Fresh") >= len(fresh.enqueued), 30, "every fresh job sent")
        wait_for(lambda: idle(redis_client), 30, "no job left queued, scheduled or running")
        with sandbox.state.lock:
            requests = list(sandbox.state.requests)
        memory_peak = int(redis_client.info("memory")["used_memory_peak"])

    statuses = Counter(r["status"] for r in requests)
    delivered = Counter(r["body"]["type"] for r in requests if r["status"] == 200)
    twice = [t for t, n in delivered.items() if n > 1]
    never = JOBS - sum(1 for t in delivered if t.startswith("Replayed"))
    refused_at = sorted(round(r["at"] - started_at, 1) for r in requests if r["status"] == 429)
    arrived = {r["body"]["type"]: r["at"] for r in requests if r["body"]["type"].startswith("Fresh")}
    waits = [arrived[name] - at for name, at in fresh.enqueued.items()]
    late = {n: round(arrived[n] - at, 2) for n, at in fresh.enqueued.items() if arrived[n] - at > LATENCY_MS / 1000 + 1}
    print(
        f"\n{JOBS} dead letters filled in {fill_s:.1f} s, Redis {memory_full / 2**20:.0f} MiB; replay's first "
        f"progress line after {first.first_line_s:.1f} s, interrupted at {JOBS - left} (exit {first_status}), "
        f"resumed for {left}: {replay_s:.1f} s in all, {JOBS / replay_s:.0f}/s replayed at a limit of {RATE}/s; "
        f"{len(fresh.enqueued)} fresh jobs waited p50 {percentile(waits, 0.5):.3f} s, p99 "
        f"{percentile(waits, 0.99):.3f} s, max {max(waits):.3f} s, {len(late)} over latency + 1 s; responses "
        f"{dict(statuses)} (429s at {refused_at[:20]} s); delivered twice {len(twice)}, never {never}; Redis peak "
        f"{memory_peak / 2**20:.0f} MiB"
    )
    assert first_status == 130 and "interrupted" in "\n".join(first.lines)
    assert 0 < left < JOBS, "interrupted midway"
    assert first.progress() and second.progress(), "each run shows its progress"
    assert second.progress()[-1].startswith(f"replay: {left} of {left} entries done: replayed {left}")
    assert second_status == 0 and json.loads(second_out) == {"replayed": left, "stale": 0, "missing": 0, "unserved": 0}
    assert never == 0 and twice == [], "every replayed job delivered exactly once"
    assert redis_client.zcard(keys.DEAD_INDEX) == 0 and int(redis_client.hget(keys.STATS, "replayed")) == JOBS
    assert statuses[429] == 0, "no 429 at the sandbox"
    assert set(statuses) == {200}
    assert not late, f"fresh jobs that waited more than latency + 1 s: {late}"


class Sent:
    """Requests the sandbox has seen, by the first word of their event type, counted as they
    come: each look reads only the requests new since the last (at 100,000 requests, reading
    them all at every look would hold the sandbox's lock long enough to slow it)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.state = sandbox.state
        self._seen = 0
        self._counts: Counter[str] = Counter()

    def count(self, word: str) -> int:
        with self.state.lock:
            new = self.state.requests[self._seen :]
        self._seen += len(new)
        self._counts.update(str(r["body"].get("type", "")).split(" ")[0] for r in new)
        return self._counts[word]


def idle(client: Any) -> bool:
    """Whether no job is queued, scheduled or running: nothing more can reach the sandbox."""
    return sum(int(client.zcard(k)) for k in (keys.QUEUED, keys.SCHEDULE, keys.LEASES)) == 0
