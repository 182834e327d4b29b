"""One rate limit per endpoint and credential, shared by every worker on every machine.

A GCRA (generic cell rate algorithm) bucket in Redis, one key per `Bucket` (a credential and
an endpoint, as each destination defines them: Attentive's token and endpoint, Yotpo's store),
updated by a Lua script that reads Redis's own clock, so worker clocks don't matter. Each call
*reserves* the next free send slot and returns how long until it: requests leave evenly
spaced at ``rate`` per second, however many workers ask.

A lane reserves slots only when they are near (`RateLimiter.reserve_up_to`): when the next
free slot is further off, nothing is reserved and the lane comes back nearer its turn (or,
past its budget, the job is parked in the retry schedule without burning an attempt). A
reserved slot is therefore used on time, and parked jobs never return late to a slot of
theirs and bunch up past Attentive's count for a second. Each endpoint is
its own lane (`worker.lanes`), so identity calls queued at 10/s never hold up custom events
at 150/s.

When Attentive answers 429, or reports ``x-ratelimit-remaining: 0``, the whole bucket backs
off (`RateLimiter.back_off`), not just the one job. A slot reserved before that is void; a
send that waited for its slot asks whether another worker backed the bucket off meanwhile
(`RateLimiter.held`) through a view of the holds that one thread per process reads at most
every ``ATTENTIVE_RATE_MAX_WAIT_S / 2`` for each bucket: one round trip per bucket and period,
not one per send (which was a third of a process's round trips at full pace).

The token appears in key names only as a SHA-256 prefix. Each script touches one key, so it
works on Redis Cluster as well as on a single Redis or a Sentinel-managed primary.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import redis

from producers.settings import Settings
from producers.store import keys, lua
from producers.store.connection import connect
from worker.destinations.base import Bucket

# Several consecutive slots at once: {how many, the first one's wait}; the others follow at the
# interval. With a maximum wait (ARGV[3] >= 0), only the slots at most that far off are
# reserved: none, when the first is further (its wait is still returned).
_RESERVE_MANY = lua.script("worker", "ratelimit_reserve_many")

_BACK_OFF = lua.script("worker", "ratelimit_back_off")


class RateLimiter:
    """Reserves send slots in `Bucket`s (a credential and an endpoint, with its rate), which
    the destinations define; this class knows nothing of them."""

    def __init__(self, client: redis.Redis, headroom: float, holds_fresh_s: float = 0.05) -> None:
        self._headroom = headroom
        self._client = client
        self._held: dict[str, float] = {}
        self._holds = _HoldView(client, holds_fresh_s)
        self._offsets: deque[float] = deque(maxlen=64)
        self._offset_lock = threading.Lock()

    def rate(self, bucket: Bucket) -> float:
        """The rate this relay aims at in ``bucket``: its limit times the headroom."""
        return bucket.rate * self._headroom

    @staticmethod
    def key(bucket: Bucket) -> str:
        return keys.rate_bucket(bucket.tag, bucket.lane)

    def reserve(self, bucket: Bucket) -> float:
        """Reserve the next send slot in ``bucket``: seconds until it. Send then, or the slot is wasted."""
        return self.reserve_many(bucket, 1)[0]

    def reserve_many(self, bucket: Bucket, count: int) -> list[float]:
        """Reserve ``count`` consecutive slots in one call: seconds until each."""
        interval_us = round(1_000_000 / self.rate(bucket))
        _, wait_us, _ = _RESERVE_MANY(self._client, keys=[self.key(bucket)], args=[interval_us, count, -1])
        return [(int(wait_us) + i * interval_us) / 1_000_000 for i in range(count)]

    def reserve_up_to(self, bucket: Bucket, count: int, max_wait_s: float) -> tuple[list[float], float]:
        """Reserve up to ``count`` consecutive slots, only those at most ``max_wait_s`` away
        (any, if negative): (when each reserved slot is, when the next free one is), as
        ``time.time()`` values. Nothing is held beyond that: a job whose slot is further off
        comes back nearer its turn, so no slot is ever reserved for a job that may miss it.

        The times come from Redis's clock, mapped to this process's by the smallest offset
        seen (`_to_local`): a thread held up between the answer and reading its clock would
        otherwise shift its slots late, into the next ones."""
        interval_us = round(1_000_000 / self.rate(bucket))
        args = [interval_us, count, round(max_wait_s * 1e6) if max_wait_s >= 0 else -1]
        got, wait, redis_now = _RESERVE_MANY(self._client, keys=[self.key(bucket)], args=args)
        first = self._to_local(int(redis_now), time.time()) + int(wait) / 1_000_000
        return [first + i * interval_us / 1_000_000 for i in range(int(got))], first

    def _to_local(self, redis_now_us: int, local_after: float) -> float:
        """Redis's ``now`` on this process's clock. The answer arrived at or after Redis's
        ``now``: the smallest (local - Redis) difference seen lately is the truest offset."""
        seen = local_after - redis_now_us / 1_000_000
        with self._offset_lock:
            self._offsets.append(seen)
            offset = min(self._offsets)
        return redis_now_us / 1_000_000 + offset

    def back_off(self, bucket: Bucket, seconds: float) -> None:
        """Push the bucket's next free slot at least ``seconds`` into the future, for every
        worker, and mark it held for that long (see `held`)."""
        self._held[self.key(bucket)] = time.monotonic() + seconds
        hold = keys.rate_hold(bucket.tag, bucket.lane)
        _BACK_OFF(self._client, keys=[self.key(bucket), hold], args=[round(seconds * 1_000_000)])

    def held(self, bucket: Bucket, ask_redis: bool) -> bool:
        """Whether the bucket was backed off after a slot in it was reserved: a slot reserved
        earlier must then not be used. This process knows of its own back-offs for free; with
        ``ask_redis``, other workers' count too, as read at most ``holds_fresh_s`` ago."""
        now = time.monotonic()
        if self._held.get(self.key(bucket), 0.0) > now:
            return True
        return ask_redis and self._holds.held(keys.rate_hold(bucket.tag, bucket.lane), now)


class _HoldView:
    """Other workers' back-offs, per hold key, as read at most ``fresh_s`` ago. Thread-safe:
    when the view of a key is stale, one thread reads it (its remaining time, so a hold seen
    stays known until it ends) while the others wait for that answer."""

    def __init__(self, client: redis.Redis, fresh_s: float) -> None:
        self._client = client
        self._fresh_s = fresh_s
        self._seen: dict[str, tuple[float, float]] = {}  # key -> (read at, held until), monotonic
        self._lock = threading.Lock()

    def held(self, key: str, now: float) -> bool:
        read_at, until = self._seen.get(key, (float("-inf"), 0.0))
        if until <= now and now - read_at > self._fresh_s:  # a hold seen lasts until its end
            with self._lock:
                read_at, until = self._seen.get(key, (float("-inf"), 0.0))
                if until <= now and time.monotonic() - read_at > self._fresh_s:
                    read_at = time.monotonic()
                    ttl_ms = int(self._client.pttl(key))
                    # -2: no hold; -1: a hold without an end (not written so; taken as held).
                    until = read_at + ttl_ms / 1000 if ttl_ms >= 0 else (float("inf") if ttl_ms == -1 else 0.0)
                    self._seen[key] = (read_at, until)
        return until > now


def for_settings(settings: Settings, client: redis.Redis) -> RateLimiter:
    """The limiter every process shares: on ``ATTENTIVE_RATE_LIMIT_REDIS_URL`` when set (a Redis
    shared by deployments that use the same tokens), otherwise on ``client`` (REDIS_URL)."""
    url = settings.attentive_rate_limit_redis_url
    limiter_redis = connect(url.get_secret_value(), settings.redis_sentinel_master) if url else client
    return RateLimiter(limiter_redis, settings.attentive_rate_headroom, settings.attentive_rate_max_wait_s / 2)
