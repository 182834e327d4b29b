"""A brand paused, not burned: a 401 or 403 holds an account's deliveries to a destination.

A revoked or mis-scoped token makes every request of that account to that destination fail
the same way; dead-lettering them would burn the brand's whole backlog. Instead:

- the first 401/403 (`worker.policy.Pause`) marks the *lane* ``ACCOUNT|DESTINATION`` paused
  in `producers.store.keys.PAUSED`, with the reason, the status and since when (the first one
  stays);
- that job, and every later job of the lane that a worker takes, is *held*: given back to the
  schedule without counting an attempt (`worker.jobstore.JobStore.defer`), listed in
  `producers.store.keys.held`, and due again after `RECHECK_S` in case the pause was lifted by hand;
- ``attentive-relay resume ACCOUNT [--destination D]`` (`Pauses.resume`) lifts the pause and
  queues every held job at once, in batch messages (`worker.held`).

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

from producers.store import keys, replies
from worker.held import HeldRelease

#: How often a worker reads which lanes are paused.
REFRESH_S = 1.0
#: A held job comes back this often to see whether its lane is still paused.
RECHECK_S = 300.0


def lane(account: str, destination: str) -> str:
    return f"{account}|{destination}"


class LaneSet:
    """The lanes named in a Redis hash (`producers.store.keys.PAUSED`, `producers.store.keys.CIRCUIT`), as
    one worker process sees them: read at most every `REFRESH_S`. Thread-safe."""

    def __init__(self, client: redis.Redis, key: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.key = key
        self._clock = clock
        self._lock = threading.Lock()
        self._lanes: frozenset[str] = frozenset()
        self._read_at = float("-inf")

    def __contains__(self, name: object) -> bool:
        now = self._clock()
        with self._lock:
            stale = now - self._read_at >= REFRESH_S
            if stale:
                # One thread reads; the others answer from the last view meanwhile (hundreds
                # of sender threads would otherwise all read at once, each second).
                self._read_at = now
        if stale:
            try:
                fields = self.client.hkeys(self.key)
            except BaseException:
                self.forget()
                raise
            with self._lock:
                self._lanes = frozenset(replies.text(f) for f in fields)
        return name in self._lanes

    def add(self, name: str) -> None:
        with self._lock:
            self._lanes = self._lanes | {name}

    def discard(self, name: str) -> None:
        with self._lock:
            self._lanes = self._lanes - {name}

    def forget(self) -> None:
        """Read Redis again at the next question."""
        with self._lock:
            self._read_at = float("-inf")

    def listed(self) -> dict[str, dict[str, object]]:
        """Every lane in the hash with its JSON value and how many jobs it holds."""
        out: dict[str, dict[str, object]] = {}
        for name, raw in self.client.hgetall(self.key).items():
            value = json.loads(raw)
            value["held"] = self.client.zcard(keys.held(replies.text(name)))
            out[replies.text(name)] = value
        return out


class Pauses:
    """The paused lanes, as one worker process sees them. Thread-safe."""

    def __init__(self, client: redis.Redis, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self._paused = LaneSet(client, keys.PAUSED, clock)

    def is_paused(self, account: str, destination: str) -> bool:
        """Whether the lane is paused (as read at most `REFRESH_S` ago)."""
        return lane(account, destination) in self._paused

    def pause(self, account: str, destination: str, reason: str, status: int | None, now_ms: int) -> bool:
        """Mark the lane paused (the first pause's reason and time stay): whether it was not yet."""
        since = datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        value = json.dumps({"reason": reason, "status": status, "since": since})
        first = bool(self.client.hsetnx(keys.PAUSED, lane(account, destination), value))
        self._paused.add(lane(account, destination))
        return first

    def resume(self, account: str, destination: str | None, now_ms: int) -> tuple[list[str], int]:
        """Lift the pauses of ``account`` (at ``destination``, or at every one): returns the
        lanes resumed and how many held jobs were queued (`worker.held`)."""
        lanes = [replies.text(f) for f in self.client.hkeys(keys.PAUSED)]
        chosen = [name for name in lanes if name.split("|")[0] == account and destination in (None, name.split("|")[1])]
        held_keys = [keys.held(lane(account, d)) for d in ([destination] if destination else [])]
        held_keys += [replies.text(k) for k in self.client.scan_iter(match=keys.held(lane(account, "*")), count=1000)]
        if chosen:
            self.client.hdel(keys.PAUSED, *chosen)
            # Workers read the paused lanes at most every REFRESH_S: a job released sooner could
            # meet a worker that still holds the lane paused and be held for RECHECK_S more.
            time.sleep(REFRESH_S + 0.1)
        self._paused.forget()
        released, release = 0, HeldRelease(self.client)
        for key in dict.fromkeys(held_keys):
            if destination is not None and not key.endswith(f"|{destination}"):
                continue
            released += release.release(key.removeprefix(keys.held("")), now_ms)
        return chosen, released

    def listed(self) -> dict[str, dict[str, object]]:
        """Every paused lane with its reason, status, since, and how many jobs it holds."""
        return self._paused.listed()
