"""A brand paused, not burned: a 401 or 403 holds an account's deliveries to a destination.

A revoked or mis-scoped token makes every request of that account to that destination fail
the same way; dead-lettering them would burn the brand's whole backlog. Instead:

- the first 401/403 (`worker.policy.Pause`) marks the *lane* ``ACCOUNT|DESTINATION`` paused
  in `producers.keys.PAUSED`, with the reason, the status and since when (the first one
  stays);
- that job, and every later job of the lane that a worker takes, is *held*: given back to the
  schedule without counting an attempt (`worker.jobstore.JobStore.defer`), listed in
  `producers.keys.held`, and due again after `RECHECK_S` in case the pause was lifted by hand;
- ``attentive-relay resume ACCOUNT [--destination D]`` (`Pauses.resume`) lifts the pause and
  makes every held job due now; the promoters queue them.

Other accounts and destinations are untouched. A missing token is not a pause: no request
was made, and the job is dead-lettered as ``unauthorized`` with the setting to fix.

Workers read the paused lanes at most every `REFRESH_S`, so a pause set by one worker holds
the others' jobs within that long (their requests in flight meanwhile get the same 401 and
are held too).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import redis

from producers import keys

#: How often a worker reads which lanes are paused.
REFRESH_S = 1.0
#: A held job comes back this often to see whether its lane is still paused.
RECHECK_S = 300.0


def lane(account: str, destination: str) -> str:
    return f"{account}|{destination}"


class Pauses:
    """The paused lanes, as one worker process sees them. Thread-safe."""

    def __init__(self, client: redis.Redis, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self._clock = clock
        self._lock = threading.Lock()
        self._paused: frozenset[str] = frozenset()
        self._read_at = float("-inf")

    def is_paused(self, account: str, destination: str) -> bool:
        """Whether the lane is paused (as read at most `REFRESH_S` ago)."""
        now = self._clock()
        with self._lock:
            stale = now - self._read_at >= REFRESH_S
        if stale:
            fields = self.client.hkeys(keys.PAUSED)
            with self._lock:
                self._paused = frozenset(f.decode() for f in fields)
                self._read_at = now
        return lane(account, destination) in self._paused

    def pause(self, account: str, destination: str, reason: str, status: int | None, now_ms: int) -> bool:
        """Mark the lane paused (the first pause's reason and time stay): whether it was not yet."""
        since = datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        value = json.dumps({"reason": reason, "status": status, "since": since})
        first = bool(self.client.hsetnx(keys.PAUSED, lane(account, destination), value))
        with self._lock:
            self._paused = self._paused | {lane(account, destination)}
        return first

    def resume(self, account: str, destination: str | None, now_ms: int) -> tuple[list[str], int]:
        """Lift the pauses of ``account`` (at ``destination``, or at every one): returns the
        lanes resumed and how many held jobs were made due now."""
        lanes = [f.decode() for f in self.client.hkeys(keys.PAUSED)]
        chosen = [name for name in lanes if name.split("|")[0] == account and destination in (None, name.split("|")[1])]
        held_keys = [keys.held(lane(account, d)) for d in ([destination] if destination else [])]
        held_keys += [k.decode() for k in self.client.scan_iter(match=keys.held(lane(account, "*")), count=1000)]
        released = 0
        for key in dict.fromkeys(held_keys):
            if destination is not None and not key.endswith(f"|{destination}"):
                continue
            ids = [i.decode() for i in self.client.zrange(key, 0, -1)]
            pipe = self.client.pipeline(transaction=True)
            if ids:
                pipe.zadd(keys.SCHEDULE, dict.fromkeys(ids, now_ms), xx=True)
            pipe.delete(key)
            pipe.execute()
            released += len(ids)
        if chosen:
            self.client.hdel(keys.PAUSED, *chosen)
        with self._lock:
            self._read_at = float("-inf")
        return chosen, released

    def listed(self) -> dict[str, dict[str, object]]:
        """Every paused lane with its reason, status, since, and how many jobs it holds."""
        out: dict[str, dict[str, object]] = {}
        for name, raw in self.client.hgetall(keys.PAUSED).items():
            value = json.loads(raw)
            value["held"] = self.client.zcard(keys.held(name.decode()))
            out[name.decode()] = value
        return out
