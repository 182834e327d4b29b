"""A job's life in Redis: claim, finish, promote, reap. Every transition is one Lua script.

States of the job hash (`producers.store.keys.job`)::

    queued --claim--> running --finish(delivered)--> (deleted, counted)
      ^  |               |----finish(retry)-------> scheduled --promote--> queued
      |  |               |----finish(dead)--------> (moved to the dead-letter store)
      |  |               '----lease expires-------> queued (marked lost; reaped)
      '--'
     message lost: reconciled (queued again with a new ticket)

Only the message whose task id equals the job's ``ticket`` may claim it, and only while the
job is ``queued``; promote, reap and reconcile issue a new ticket. A duplicate or restored
message therefore finds ``stale`` or ``busy`` and does nothing, and a finish whose ticket no
longer matches (the delivery was taken over) changes nothing. Each job ends in exactly one
outcome.

The job record is the truth; the broker message is only a wake-up. A message can vanish
while its job still says ``queued``: a worker killed between Redis handing it the message
(BRPOP) and the claim, or a Redis restart whose append-only file kept the record but not the
push. Every queued job is indexed by the time it was queued in this round
(`producers.store.keys.QUEUED`); `JobStore.reconcile` looks at those that have waited past
``orphan_ms``, searches the queue for their current message, and queues again those whose
message is gone. Its cost is bounded: a few candidates per pass, each searched in at most
``scan_max`` messages from the consuming end of the queue. A job deeper than that in a long
backlog may be queued again while its old message still exists; the old message then finds
``stale``, so this costs an extra message, never a second delivery.

The reconciler never makes a job look younger: the index keeps when the job was queued
(`stats` reads true ages from it, so jobs on a queue no worker consumes show as overdue),
and the record keeps when the reconciler last found its message (``checked``), so it is
searched again only an orphan period later. A cursor (`producers.store.keys.RECONCILE_CURSOR`)
walks the overdue jobs a few per pass, so every one is looked at in turn.

Identity ordering (`producers.store.ordering`) at scale: when an identity job ends, its list of
waiters is renamed (`producers.store.keys.released`) and at most `FINISH_RELEASE` of them are
queued by the script that records the end; the rest are queued by the promoters,
`RELEASE_CHUNK` per script (`JobStore.release_waiters`), so no script grows with the list.
Identity jobs with waiters are indexed once each (`producers.store.keys.AWAITED`); the reconciler
checks each of them once per orphan period, up to `IDENTITY_CHUNK` per script, and releases
the waiters of one that vanished without ending (erased, expired) the same way.

These scripts touch keys derived inside the script (one job hash per id), so they need a
single Redis (or Sentinel-managed primary), not Redis Cluster: the Celery Redis broker has the
same requirement.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import redis

from producers import accounts
from producers.store import erasure, keys, lua
from producers.store.message import message_template
from worker import observed

log = logging.getLogger("attentive_relay.jobstore")

FINISH_RELEASE = 100
"""Waiters queued by the script that records their identity job's end; the promoters queue
the rest. 1.5 to 4 ms of Redis time, on the delivery's own path."""
RELEASE_CHUNK = 100
"""Waiters queued per release script: under 5 ms of Redis time (12-76 us each on the 2-core
machine, idle to loaded; 250 per script reached 75 ms once in CI), far below the 50 ms that
other clients would feel."""
IDENTITY_CHUNK = 1000
"""Identity jobs checked for having vanished per script: about 2 ms of Redis time."""
IDENTITY_SCRIPTS = 20
"""Most identity-check scripts per reconciliation pass: 20,000 identity jobs with waiters are
checked each pass, so one that vanished is found within an orphan period and a few passes
even at 100,000 of them."""
RELEASE_BUDGET_S = 0.2
"""How long one promoter pass may keep queuing released waiters before its other work."""
UNKNOWN_ACCOUNT = "unknown_account"
"""The dead-letter reason of a job moved out of an account no worker serves (`JobStore.move_jobs`)."""

# KEYS: job, leases, queued index
# ARGV: ticket, lease expiry ms, job_id
_CLAIM = lua.script("worker", "jobstore_claim")

# One batch message's jobs: each claimed as _CLAIM does, then the batch's kept message is
# dropped (the reconciler looks for it only while it waits in the queue).
# KEYS: leases, queued index, batch key   ARGV: lease expiry ms, key prefix, then job_id, ticket pairs
_CLAIM_MANY = lua.script("worker", "jobstore_claim_many")

REQUEUE_LIBRARY = "jobstore_requeue"
"""Lua functions shared by the scripts that queue a job again, each on the queue its record names
(its account's; ``fallback`` for a record written before records named one): prepended to them."""

# KEYS: job, leases, schedule, stats, dead entry, dead index, account stats, queued index, waiting index,
#       awaited index, releasing index, observed
# ARGV: ticket, job_id, outcome, now_ms, history, due_ms, entry, reason, retention_ms, slot_ms,
#       template, key prefix, fallback queue, waiters released here, then observed field/increment pairs
_FINISH = lua.script("worker", "jobstore_finish", requires=(REQUEUE_LIBRARY,))

# KEYS: schedule, leases, default queue, queued index, stats
# ARGV: now_ms, limit, message template, key prefix
_PROMOTE = lua.script("worker", "jobstore_promote", requires=(REQUEUE_LIBRARY,))

# KEYS: reconcile lock, queued index, default queue, waiting index, stats, awaited index, cursor
# ARGV: now_ms, cutoff_ms, message template, key prefix, limit, scan_max, lock_ms, waiters swept
_RECONCILE = lua.script("worker", "jobstore_reconcile", requires=(REQUEUE_LIBRARY,))

# Identity jobs with waiters, due for a check: one that no longer exists vanished without ending
# (erased, expired), so its waiters are released (by the promoters, `_RELEASE`).
# KEYS: awaited index, releasing index   ARGV: now_ms, cutoff_ms, limit, key prefix
_AWAITED = lua.script("worker", "jobstore_awaited")

# Queue the jobs of released waiter lists, oldest list first, up to a chunk in all.
# KEYS: releasing index, waiting index, queued index, stats
# ARGV: now_ms, chunk, message template, key prefix, fallback queue
_RELEASE = lua.script("worker", "jobstore_release", requires=(REQUEUE_LIBRARY,))

# Move jobs of one account that no worker serves: to another account's queue (their JSON and
# record name it), or to the dead-letter store. Only jobs still queued, scheduled or waiting and
# still of that account (and, when the target is the same account, not yet on its queue) move;
# a job claimed meanwhile is left to its worker.
# KEYS: queued index, schedule, waiting index, stats, account stats, dead index, awaited index,
#       releasing index
# ARGV: now_ms, 'move' or 'dead', from account, to account, to queue, template, key prefix,
#       dead-letter retention ms, fallback queue, reason, then per job: job_id, new job JSON or dead entry
_MOVE = lua.script("worker", "jobstore_move", requires=(REQUEUE_LIBRARY,))


@dataclass(frozen=True)
class Claim:
    """A job this worker may now deliver: its JSON, attempt number and history so far."""

    job_id: str
    ticket: str
    job_json: str
    attempt: int
    history: list[dict[str, Any]]
    lost_at_ms: int | None
    first_seen_ms: int
    round: int
    slot_ms: int | None = None
    """When a rate-limit slot was reserved for this attempt (epoch ms), if one was."""
    account: str = accounts.DEFAULT
    """The account the record names (for its counters)."""


class JobStore:
    """The Redis side of one worker process. ``client`` is a redis-py client."""

    def __init__(self, client: redis.Redis, queue: str, lease_ms: int, retention_ms: int, orphan_ms: int) -> None:
        self.client = client
        self.queue = queue
        self.lease_ms = lease_ms
        self.retention_ms = retention_ms
        self.orphan_ms = orphan_ms
        self._template = message_template()

    def claim(self, job_id: str, ticket: str, now_ms: int) -> Claim | str:
        """Take the job for one attempt, or say why not: ``gone``, ``stale`` or ``busy``."""
        r = _CLAIM(
            self.client,
            keys=[keys.job(job_id), keys.LEASES, keys.QUEUED],
            args=[ticket, now_ms + self.lease_ms, job_id],
        )
        return _claim_of(job_id, ticket, r)

    def claim_many(self, batch_id: str, tickets: list[tuple[str, str]], now_ms: int) -> list[Claim | str]:
        """`claim` for each (job_id, ticket) of one batch message, in one script."""
        args: list[Any] = [now_ms + self.lease_ms, keys.PREFIX]
        for job_id, ticket in tickets:
            args += [job_id, ticket]
        found = _CLAIM_MANY(self.client, keys=[keys.LEASES, keys.QUEUED, keys.batch(batch_id)], args=args)
        return [_claim_of(job_id, ticket, r) for (job_id, ticket), r in zip(tickets, found, strict=True)]

    def _run_finish(
        self,
        claim: Claim,
        outcome: str,
        now_ms: int,
        history: list[dict[str, Any]],
        due_ms: int = 0,
        entry: str = "",
        reason: str = "",
        slot_ms: int = 0,
        pipe: redis.client.Pipeline | None = None,
        observe: list[Any] | None = None,
    ) -> bool:
        """Run the finish script; with ``pipe`` only queue it there (its result comes from
        `producers.store.lua.run_pipeline`, which sends that pipeline), and return True. ``observe``:
        `worker.observed` fields and increments, counted when the outcome is."""
        finish_keys, finish_args = (
            [
                keys.job(claim.job_id),
                keys.LEASES,
                keys.SCHEDULE,
                keys.STATS,
                keys.dead(claim.job_id),
                keys.DEAD_INDEX,
                keys.account_stats(claim.account),
                keys.QUEUED,
                keys.WAITING,
                keys.AWAITED,
                keys.RELEASING,
                observed.KEY,
            ],
            [
                claim.ticket,
                claim.job_id,
                outcome,
                now_ms,
                json.dumps(history),
                due_ms,
                entry,
                reason,
                self.retention_ms,
                slot_ms,
                self._template,
                keys.PREFIX,
                self.queue,
                FINISH_RELEASE,
                *(observe or []),
            ],
        )
        if pipe is not None:
            _FINISH.queue(pipe, finish_keys, finish_args)
            return True
        return bool(_FINISH(self.client, finish_keys, finish_args))

    def delivered(self, claim: Claim, now_ms: int, pipe: redis.client.Pipeline | None = None) -> bool:
        """Count the job delivered and forget it. False when the delivery had been taken over."""
        seen = observed.on_delivered(claim.account, claim.job_json, claim.first_seen_ms, now_ms)
        return self._run_finish(claim, "delivered", now_ms, [], pipe=pipe, observe=seen)

    def schedule(
        self,
        claim: Claim,
        now_ms: int,
        delay_ms: int,
        history: list[dict[str, Any]],
        pipe: redis.client.Pipeline | None = None,
    ) -> bool:
        """Park the job in the retry schedule; a promoter queues it again when due."""
        seen = observed.on_retry(claim.account, claim.attempt, history)
        return self._run_finish(claim, "retry", now_ms, history, due_ms=now_ms + delay_ms, pipe=pipe, observe=seen)

    def defer(
        self, claim: Claim, now_ms: int, due_ms: int, slot_ms: int, pipe: redis.client.Pipeline | None = None
    ) -> bool:
        """Park the job until ``due_ms``; the attempt is given back."""
        return self._run_finish(claim, "defer", now_ms, [], due_ms=due_ms, slot_ms=slot_ms, pipe=pipe)

    def dead_letter(
        self,
        claim: Claim,
        now_ms: int,
        reason: str,
        entry: dict[str, Any],
        pipe: redis.client.Pipeline | None = None,
    ) -> bool:
        """Move the job to the dead-letter store with ``entry`` as its record."""
        seen = observed.on_dead(claim.account, claim.attempt, reason, claim.job_json, entry.get("attempts"))
        return self._run_finish(
            claim, "dead", now_ms, [], entry=json.dumps(entry), reason=reason, pipe=pipe, observe=seen
        )

    def promote(self, now_ms: int, limit: int = 500) -> tuple[int, int]:
        """Queue due retries and reclaim expired leases: (promoted, reaped)."""
        promoted, reaped = _PROMOTE(
            self.client,
            keys=[keys.SCHEDULE, keys.LEASES, self.queue, keys.QUEUED, keys.STATS],
            args=[now_ms, limit, self._template, keys.PREFIX],
        )
        return int(promoted), int(reaped)

    def reconcile(
        self,
        now_ms: int,
        limit: int = 20,
        scan_max: int = 10_000,
        lock_ms: int = 1000,
        sweep: int = 100,
        budget_s: float = RELEASE_BUDGET_S,
    ) -> tuple[int, int, int] | None:
        """Queue again the jobs that say ``queued`` but whose message is gone, and the jobs waiting
        for an identity job that no longer exists: (requeued, found still waiting, released).

        Looks at up to ``limit`` jobs queued longer than ``orphan_ms`` ago, going round them a
        few per pass (each one searched at most once per orphan period), at up to ``sweep``
        waiting jobs, and at every identity job with waiters due for its check (once per orphan
        period; up to `IDENTITY_SCRIPTS` scripts of `IDENTITY_CHUNK`). Waiters of one that
        vanished are released as `release_waiters` does, within ``budget_s``. One pass runs at
        a time across all workers, and at most one per ``lock_ms``: None means another promoter
        ran it just now. Raises ``redis.RedisError`` when Redis cannot be reached; what a
        script did before that stays done (each is atomic on its own).
        """
        requeued, waiting = _RECONCILE(
            self.client,
            keys=[
                keys.RECONCILE_LOCK,
                keys.QUEUED,
                self.queue,
                keys.WAITING,
                keys.STATS,
                keys.AWAITED,
                keys.RECONCILE_CURSOR,
            ],
            args=[now_ms, now_ms - self.orphan_ms, self._template, keys.PREFIX, limit, scan_max, lock_ms, sweep],
        )
        if int(requeued) < 0:
            return None
        vanished = 0
        for _ in range(IDENTITY_SCRIPTS):
            checked, gone = _AWAITED(
                self.client,
                keys=[keys.AWAITED, keys.RELEASING],
                args=[now_ms, now_ms - self.orphan_ms, IDENTITY_CHUNK, keys.PREFIX],
            )
            vanished += int(gone)
            if int(checked) < IDENTITY_CHUNK:
                break
        if vanished:
            log.warning("%d identity jobs vanished without ending (erased or expired); their waiters go now", vanished)
        return int(requeued), int(waiting), self.release_waiters(now_ms, budget_s)

    def release_waiters(self, now_ms: int, budget_s: float = RELEASE_BUDGET_S, chunk: int = RELEASE_CHUNK) -> int:
        """Queue the jobs still listed under identity jobs that ended or vanished, oldest first,
        ``chunk`` per script, until none is left or ``budget_s`` has passed; returns how many were
        queued. Safe to run from any number of promoters at once: each job is taken from its
        list and queued in the same script. Raises ``redis.RedisError`` when Redis cannot be
        reached (the chunks queued before stay queued)."""
        deadline = time.monotonic() + budget_s
        released = 0
        while True:
            queued, left = _RELEASE(
                self.client,
                keys=[keys.RELEASING, keys.WAITING, keys.QUEUED, keys.STATS],
                args=[now_ms, chunk, self._template, keys.PREFIX, self.queue],
            )
            released += int(queued)
            if not int(left) or time.monotonic() >= deadline:
                return released

    def move_jobs(
        self,
        account: str,
        to_account: str | None,
        to_queue: str,
        detail: str = "",
        dry_run: bool = False,
        chunk: int = 100,
        erasure_key: bytes | None = None,
        person_ttl_ms: int = 0,
    ) -> dict[str, int]:
        """Move every job of ``account`` still queued, scheduled or waiting: to ``to_account``
        (its JSON and record name it, its queue is ``to_queue``; a queued job gets a new message
        there and its old one is fenced off as stale), or, with ``to_account`` None, to the
        dead-letter store as `UNKNOWN_ACCOUNT` with ``detail`` (which must hold no personal data).
        A job keeps its state: a scheduled one is promoted onto the new queue when due, a waiting
        one is released there when its identity job (moved with it: same account) ends.

        With ``to_account == account`` only the jobs whose record names another queue than
        ``to_queue`` move (``ATTENTIVE_QUEUE`` was renamed). Jobs in flight are left to their
        worker and only counted. With ``dry_run``, nothing changes and ``moved`` and
        ``dead_lettered`` stay 0. Returns counts: ``queued``, ``scheduled``, ``waiting`` (jobs
        found in each state), ``in_flight``, ``moved``, ``dead_lettered``.

        A job moved to ``to_account`` is indexed under that account's customer ids too (with
        ``erasure_key``, `producers.store.erasure.index_of`; its sets live ``person_ttl_ms``),
        before it moves, so ``erase`` finds it by an id of either account.

        Walks the indexes with ZSCAN and moves ``chunk`` jobs per script, so Redis keeps serving
        others while it runs; a job the walk meets twice is moved once. Raises
        ``redis.RedisError`` when Redis cannot be reached; the chunks moved before stay moved.
        """
        found = {"queued": 0, "scheduled": 0, "waiting": 0, "in_flight": 0, "moved": 0, "dead_lettered": 0}
        seen: set[str] = set()
        now_ms = int(time.time() * 1000)
        indexing = (erasure_key, person_ttl_ms) if erasure_key is not None and to_account is not None else None
        move = partial(
            self._move_chunk,
            account=account,
            to_account=to_account,
            to_queue=to_queue,
            detail=detail,
            dry_run=dry_run,
            now_ms=now_ms,
            seen=seen,
            found=found,
            indexing=indexing,
        )
        # Waiting jobs first: dead-lettered before their identity job, they are not released
        # onto the old queue when it ends.
        for index in (keys.WAITING, keys.SCHEDULE, keys.QUEUED, keys.LEASES):
            batch: list[str] = []
            for job_id, _score in self.client.zscan_iter(index, count=1000):
                batch.append(job_id.decode())
                if len(batch) >= chunk:
                    move(batch)
                    batch = []
            if batch:
                move(batch)
        return found

    def _move_chunk(
        self,
        batch: list[str],
        account: str,
        to_account: str | None,
        to_queue: str,
        detail: str,
        dry_run: bool,
        now_ms: int,
        seen: set[str],
        found: dict[str, int],
        indexing: tuple[bytes, int] | None,
    ) -> None:
        fields = ("state", "account", "queue", "job", "history", "first_seen", "round")
        pipe = self.client.pipeline(transaction=False)
        for job_id in batch:
            pipe.hmget(keys.job(job_id), *fields)
        args: list[Any] = []
        for job_id, values in zip(batch, pipe.execute(), strict=True):
            record = {f: (v.decode() if v is not None else None) for f, v in zip(fields, values, strict=True)}
            state = record["state"]
            if job_id in seen or (record["account"] or accounts.DEFAULT) != account or state is None:
                continue
            if to_account == account and record["queue"] == to_queue:
                continue
            if state == "running":
                found["in_flight"] += 1
                seen.add(job_id)
                continue
            if state not in ("queued", "scheduled", "waiting"):
                continue
            seen.add(job_id)
            found[state] += 1
            text = record["job"] or ""
            if to_account is not None:
                args += [job_id, job_with_account(text, to_account)]
            else:
                args += [job_id, json.dumps(_dead_entry(job_id, record, detail, now_ms))]
        if dry_run or not args:
            return
        if indexing is not None and to_account is not None:
            self._index_under(to_account, args, *indexing)
        done, _skipped = _MOVE(
            self.client,
            keys=[
                keys.QUEUED,
                keys.SCHEDULE,
                keys.WAITING,
                keys.STATS,
                keys.account_stats(account),
                keys.DEAD_INDEX,
                keys.AWAITED,
                keys.RELEASING,
            ],
            args=[
                now_ms,
                "move" if to_account is not None else "dead",
                account,
                to_account or "",
                to_queue,
                self._template,
                keys.PREFIX,
                self.retention_ms,
                self.queue,
                UNKNOWN_ACCOUNT,
                *args,
            ],
        )
        found["moved" if to_account is not None else "dead_lettered"] += int(done)

    def _index_under(self, account: str, args: list[Any], erasure_key: bytes, ttl_ms: int) -> None:
        """Index the jobs of ``args`` (job id, new JSON pairs) under ``account``'s customer ids."""
        pipe = self.client.pipeline(transaction=False)
        for job_id, text in zip(args[::2], args[1::2], strict=True):
            sets, ties = erasure.index_of(erasure_key, erasure.parsed(text), account)
            for key in sets:
                pipe.sadd(key, job_id)
                pipe.pexpire(key, ttl_ms)
            for key, member in ties:
                pipe.sadd(key, member)
        pipe.execute()


def job_with_account(job_json: str, account: str) -> str:
    """The job's JSON naming ``account`` (first, as `producers.job.validation.job_json` writes it; no
    name for the default account). Text that is not a JSON object is kept: the worker then
    dead-letters it as invalid, as it would have anyway."""
    try:
        job = json.loads(job_json)
    except ValueError:
        return job_json
    if not isinstance(job, dict):
        return job_json
    job.pop("account", None)
    if account != accounts.DEFAULT:
        job = {"account": account, **job}
    return json.dumps(job, ensure_ascii=False, separators=(",", ":"))


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dead_entry(job_id: str, record: dict[str, str | None], detail: str, now_ms: int) -> dict[str, Any]:
    """A dead-letter entry like a worker's, for a job that never reached a worker."""
    text = record["job"] or ""
    try:
        job: Any = json.loads(text)
    except ValueError:
        job = text
    try:
        attempts = json.loads(record["history"] or "[]")
    except ValueError:
        attempts = []
    return {
        "job_id": job_id,
        "job": job,
        "reason": UNKNOWN_ACCOUNT,
        "detail": detail,
        "status": None,
        "response": "",
        "attempts": attempts,
        "first_seen": _iso(int(record["first_seen"] or now_ms)),
        "last_seen": _iso(now_ms),
        "round": int(record["round"] or 0),
    }


def _claim_of(job_id: str, ticket: str, r: list[Any]) -> Claim | str:
    status = r[0].decode()
    if status != "ok":
        return status
    try:
        history = json.loads(r[3])
    except ValueError:
        history = None  # a corrupt record: the delivery treats it as a poison job
    return Claim(
        job_id,
        ticket,
        r[1].decode(),
        int(r[2]),
        history,
        int(r[4]) if r[4] else None,
        int(r[5]),
        int(r[6]),
        int(r[7]) if r[7] else None,
        r[8].decode() or accounts.DEFAULT,
    )
