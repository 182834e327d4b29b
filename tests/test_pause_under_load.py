"""A brand paused, not burned, at scale (issue 17, "Measured"): brand A's token is revoked
with its jobs queued while brand B keeps sending, then restored.

The issue's run is 10,000 jobs (``ATTENTIVE_PAUSE_JOBS=10000``, which also checks the issue's
5% bound on brand B's pace; ``ATTENTIVE_PAUSE_TOLERANCE`` overrides it). The suite runs 1,000.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime

from producers.producer import Producer
from worker.counters import stats
from worker.pause import Pauses
from worker.sandbox.server import Sandbox

from conftest import TOKEN, make_settings, sandbox_requests, wait_for

A_JOBS = int(os.environ.get("ATTENTIVE_PAUSE_JOBS", "1000"))
#: How far brand B's pace beside the pause may be from its pace alone. The issue's bound, 5%,
#: holds in the issue's run (194/s and 194/s at 10,000 jobs); in the suite, two short windows
#: on two cores shared with Redis, the sandbox and the test itself vary by up to about 7%
#: between identical runs (187 and 176/s once in CI), so the suite checks 15%: a brand held
#: up behind another's refused requests loses far more than that.
TOLERANCE = float(
    os.environ.get("ATTENTIVE_PAUSE_TOLERANCE") or (0.05 if "ATTENTIVE_PAUSE_JOBS" in os.environ else 0.15)
)
B_JOBS = 600
B_RATE = 200


def attributes(i: int) -> dict:
    return {"kind": "custom_attributes", "account": "brand-a", "user": {"email": f"a{i}@x.org"}, "properties": {"n": i}}


def b_event(i: int) -> dict:
    return {"kind": "custom_event", "account": "brand-b", "type": f"B {i}", "user": {"email": f"b{i}@x.org"}}


def b_rate(sandbox: Sandbox, first: int) -> float:
    """Brand B's deliveries per second over B events ``first`` .. ``first + B_JOBS``."""
    wanted = {f"B {i}" for i in range(first, first + B_JOBS)}
    times = sorted(r["at"] for r in sandbox_requests(sandbox) if r["status"] == 200 and r["body"].get("type") in wanted)
    assert len(times) == B_JOBS
    return (B_JOBS - 1) / (times[-1] - times[0])


def test_a_revoked_token_pauses_its_brand_and_the_other_keeps_its_pace(redis_server, redis_client, start_worker):
    with Sandbox(port=0, token=TOKEN, rate=5000) as sandbox:
        settings = make_settings(
            redis_server.url,
            sandbox.url,
            attentive_accounts=json.dumps(
                {"brand-a": {"token": "token-a"}, "brand-b": {"token": TOKEN, "rate_limit": B_RATE}}
            ),
            attentive_rate_limit=4000,
        )
        producer = Producer(settings, redis_client)
        start_worker("w", concurrency=2, settings_=settings)

        producer.enqueue_many([b_event(i) for i in range(B_JOBS)])
        wait_for(lambda: stats(redis_client, settings)["delivered"] >= B_JOBS, 60, "brand B alone")
        alone = b_rate(sandbox, 0)

        for start in range(0, A_JOBS, 1000):  # the token of brand A is refused by the sandbox
            producer.enqueue_many([attributes(i) for i in range(start, min(A_JOBS, start + 1000))])
        producer.enqueue_many([b_event(i) for i in range(B_JOBS, 2 * B_JOBS)])
        wait_for(lambda: stats(redis_client, settings)["delivered"] >= 2 * B_JOBS, 60, "brand B beside the pause")
        during = b_rate(sandbox, B_JOBS)
        refused = [r["at"] for r in sandbox_requests(sandbox) if r["status"] == 401]
        wait_for(lambda: stats(redis_client, settings)["scheduled"] >= A_JOBS, 60, "brand A's jobs held")
        s = stats(redis_client, settings)
        paused = s["paused"]["brand-a|attentive_rest"]
        since = datetime.fromisoformat(paused["since"].replace("Z", "+00:00")).timestamp()
        assert since - min(refused) <= 5, "paused within 5 s of the first refusal"
        assert sum(s["dead_letter"].values()) == 0 and paused["held"] >= A_JOBS - len(refused)
        assert len(refused) < 500, "the others were held without a request (only those already under way went)"

        sandbox.state.more_tokens = frozenset({"token-a"})  # the brand fixed its token
        resumed_at = time.monotonic()
        Pauses(redis_client).resume("brand-a", None, int(time.time() * 1000))
        wait_for(
            lambda: stats(redis_client, settings)["delivered"] >= 2 * B_JOBS + A_JOBS, 120, "brand A after resume", 0.2
        )
        released_s = time.monotonic() - resumed_at
        s = stats(redis_client, settings)
        assert sum(s["dead_letter"].values()) == 0 and s["paused"] == {}
    print(
        f"\nbrand B: {alone:.0f}/s alone, {during:.0f}/s beside brand A's pause; {len(refused)} requests refused; "
        f"{A_JOBS} held jobs delivered {released_s:.1f} s after resume"
    )
    assert abs(during - alone) <= TOLERANCE * alone, (alone, during, TOLERANCE)
