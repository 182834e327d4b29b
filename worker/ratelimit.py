"""One rate limit per Attentive endpoint and token, shared by every worker on every machine.

A GCRA (generic cell rate algorithm) bucket in Redis, one key per (token, endpoint), updated
by a Lua script that reads Redis's own clock, so worker clocks don't matter. Each call
*reserves* the next free send slot and returns how long until it: requests leave evenly
spaced at ``rate`` per second, however many workers ask.

A worker sleeps through a short wait (up to ``ATTENTIVE_RATE_MAX_WAIT_S``); a longer one means
the endpoint is backlogged, and the job is parked in the retry schedule until its reserved
slot, without burning an attempt and without holding a broker message. So identity calls
queued at 10/s never hold up custom events at 150/s.

When Attentive answers 429, or reports ``x-ratelimit-remaining: 0``, the whole bucket backs
off (`RateLimiter.back_off`), not just the one job.

The token appears in key names only as a SHA-256 prefix. Each script touches one key, so it
works on Redis Cluster as well as on a single Redis or a Sentinel-managed primary.
"""

from __future__ import annotations

import hashlib

import redis

from producers import keys
from producers.settings import Settings

#: Attentive's published per-endpoint limits that differ from the default (requests/second).
PUBLISHED_LIMITS: dict[str, float] = {"identity": 10.0}

_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local interval = tonumber(ARGV[1])
local new = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1000)
return string.format('%.0f', tat - now)
"""

_BACK_OFF = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_ = now + tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ > tat then
  redis.call('SET', KEYS[1], string.format('%.0f', until_), 'PX', math.floor(tonumber(ARGV[1]) / 1000) + 1000)
end
return 1
"""


def limits_from(settings: Settings) -> dict[str, float]:
    """Requests per second per kind: the published limits, then the configured overrides."""
    return {**PUBLISHED_LIMITS, **settings.attentive_rate_limits}


class RateLimiter:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        token = settings.attentive_api_token.get_secret_value() if settings.attentive_api_token else ""
        self._token_tag = hashlib.sha256(token.encode()).hexdigest()[:16]
        self._default = settings.attentive_rate_limit
        self._limits = limits_from(settings)
        self._headroom = settings.attentive_rate_headroom
        self._reserve = client.register_script(_RESERVE)
        self._back_off = client.register_script(_BACK_OFF)

    def rate(self, kind: str) -> float:
        """The rate this relay aims at for ``kind``: the limit times the headroom."""
        return self._limits.get(kind, self._default) * self._headroom

    def key(self, kind: str) -> str:
        return keys.rate_bucket(self._token_tag, kind)

    def reserve(self, kind: str) -> float:
        """Reserve the next send slot for ``kind``: seconds until it. Send then, or the slot is wasted."""
        interval_us = round(1_000_000 / self.rate(kind))
        return int(self._reserve(keys=[self.key(kind)], args=[interval_us])) / 1_000_000

    def back_off(self, kind: str, seconds: float) -> None:
        """Push the endpoint's next free slot at least ``seconds`` into the future, for every worker."""
        self._back_off(keys=[self.key(kind)], args=[round(seconds * 1_000_000)])
