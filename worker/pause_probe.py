"""A fixed token found without an operator: paused Attentive lanes are probed with ``GET /v1/me``.

A 401 pauses an account's lane (`worker.pause`) until ``attentive-relay resume``. Beside that,
every `PROBE_S` (60 s) one worker asks Attentive whether the account's token is accepted
again: ``GET /v1/me`` with it, which sends no data and uses no event endpoint's limit. A 200
resumes the lane as ``resume`` does (its held jobs queued in batch messages, `worker.held`);
anything else, or no answer, leaves it paused until the next probe.

Only lanes paused by a 401 (the token refused) at one of Attentive's destinations are probed.
A 403 means the token lacks a permission for that endpoint, which ``/v1/me`` cannot tell: the
lane would be resumed only to be paused again by its next job, so it waits for ``resume``. Yotpo
has no such endpoint. One probe per lane per period across every worker
(`producers.store.keys.pause_probe`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import httpx
import redis

from producers.accounts import Account
from producers.settings import Settings
from producers.store import keys
from worker.background import Background
from worker.pause import Pauses

log = logging.getLogger("attentive_relay.pause_probe")

PROBE_S = 60.0
"""How often each paused lane is probed (by one worker): a minute of held jobs at most after
the token is fixed, one cheap request a minute per lane meanwhile."""
PROBED_DESTINATIONS = frozenset({"attentive_rest", "attentive_graphql"})
"""Attentive's destinations, whose token ``GET /v1/me`` checks."""


class PauseProbe(Background):
    """Probes the paused lanes every ``interval_s`` in a daemon thread.
    ``whoami`` answers ``GET /v1/me``'s HTTP status with an account's token (raising an
    ``httpx.HTTPError`` on no answer). A Redis error skips a pass, never ends the thread."""

    thread_name = "attentive-pause-probe"

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        whoami: Callable[[Account], int],
        interval_s: float = PROBE_S,
    ) -> None:
        super().__init__()
        self.client = client
        self.interval_s = interval_s
        self.settings = settings
        self.whoami = whoami
        self.pauses = Pauses(client)

    def run_once(self) -> list[str]:
        """Probe each paused lane whose turn it is (one worker per lane per period): the lanes
        resumed. Raises ``redis.RedisError`` when Redis cannot be reached."""
        period_ms = int(self.interval_s * 1000)
        resumed = []
        for raw_lane, raw in self.client.hgetall(keys.PAUSED).items():
            lane = raw_lane.decode() if isinstance(raw_lane, bytes) else raw_lane
            name, _, destination = lane.partition("|")
            account = self.settings.accounts.get(name)
            if account is None or destination not in PROBED_DESTINATIONS or json.loads(raw).get("status") != 401:
                continue
            if not self.client.set(keys.pause_probe(lane), 1, nx=True, px=period_ms):
                continue  # another worker probed it this period
            try:
                status = self.whoami(account)
            except httpx.HTTPError as exc:  # no answer is no news: the lane stays paused
                log.info("pause probe for %s: no answer (%s); still paused", lane, type(exc).__name__)
                continue
            if status != 200:
                continue
            lanes, released = self.pauses.resume(name, destination, int(time.time() * 1000))
            if lanes:
                log.warning("%s accepts the token again (GET /v1/me 200): resumed, %d held jobs queued", lane, released)
                resumed += lanes
        return resumed

    def run_forever(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except redis.RedisError as exc:
                log.warning("pause probe cannot reach Redis (%s); trying again next period", type(exc).__name__)
