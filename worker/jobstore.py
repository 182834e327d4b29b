"""A job's life in Redis: claim, finish, promote, reap. Every transition is one Lua script.

States of the job hash (`producers.keys.job`)::

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
push. Every queued job is indexed by the time its message was pushed (`producers.keys.QUEUED`);
`JobStore.reconcile` looks at those that have waited past ``orphan_ms``, searches the queue for
their current message, and queues again those whose message is gone. Its cost is bounded:
a few candidates per pass, each searched in at most ``scan_max`` messages from the consuming
end of the queue. A job deeper than that in a long backlog may be queued again while its old
message still exists; the old message then finds ``stale``, so this costs an extra message,
never a second delivery.

These scripts touch keys derived inside the script (one job hash per id), so they need a
single Redis (or Sentinel-managed primary), not Redis Cluster: the Celery Redis broker has the
same requirement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from producers import accounts, keys
from producers.queue import message_template

# KEYS: job, leases, queued index
# ARGV: ticket, lease expiry ms, job_id
_CLAIM = """
local h = redis.call('HMGET', KEYS[1], 'state', 'ticket', 'job', 'history', 'lost', 'first_seen', 'round', 'slot',
  'account')
if not h[1] then return {'gone'} end
if h[2] ~= ARGV[1] then return {'stale'} end
if h[1] ~= 'queued' then return {'busy'} end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'lost', '', 'slot', '')
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
return {'ok', h[3], tostring(attempts), h[4] or '[]', h[5] or '', h[6] or '0', h[7] or '0', h[8] or '', h[9] or ''}
"""

# One batch message's jobs: each claimed as _CLAIM does, then the batch's kept message is
# dropped (the reconciler looks for it only while it waits in the queue).
# KEYS: leases, queued index, batch key   ARGV: lease expiry ms, key prefix, then job_id, ticket pairs
_CLAIM_MANY = """
local out = {}
for i = 3, #ARGV, 2 do
  local id, ticket = ARGV[i], ARGV[i + 1]
  local jk = ARGV[2] .. 'job:' .. id
  local h = redis.call('HMGET', jk, 'state', 'ticket', 'job', 'history', 'lost', 'first_seen', 'round', 'slot',
    'account')
  if not h[1] then
    out[#out + 1] = {'gone'}
  elseif h[2] ~= ticket then
    out[#out + 1] = {'stale'}
  elseif h[1] ~= 'queued' then
    out[#out + 1] = {'busy'}
  else
    local attempts = redis.call('HINCRBY', jk, 'attempts', 1)
    redis.call('HSET', jk, 'state', 'running', 'lost', '', 'slot', '')
    redis.call('HDEL', jk, 'batch')
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]), id)
    redis.call('ZREM', KEYS[2], id)
    out[#out + 1] = {'ok', h[3], tostring(attempts), h[4] or '[]', h[5] or '', h[6] or '0', h[7] or '0',
      h[8] or '', h[9] or ''}
  end
end
redis.call('DEL', KEYS[3])
return out
"""

# Shared by the scripts that queue a job again, each on the queue its record names (its
# account's; ``fallback`` for a record written before records named one).
_REQUEUE = """
local function expired(state, stats)
  -- A record that expired (ATTENTIVE_JOB_RETENTION_HOURS) while its id was still indexed.
  if not state then redis.call('HINCRBY', stats, 'expired', 1) end
end
local function message(tpl, id, ticket, kind, queue)
  local msg = string.gsub(tpl, '@JOB@', id)
  msg = string.gsub(msg, '@TICKET@', ticket)
  msg = string.gsub(msg, '@QUEUE@', queue)
  return (string.gsub(msg, '@KIND@', kind))
end
local function requeue(jk, id, qindex, now, tpl, fallback)
  local round = redis.call('HINCRBY', jk, 'round', 1)
  local ticket = id .. '.' .. round
  local h = redis.call('HMGET', jk, 'kind', 'queue')
  local q = h[2] or fallback
  redis.call('HSET', jk, 'state', 'queued', 'ticket', ticket)
  redis.call('HDEL', jk, 'batch')
  -- RPUSH puts it at the head (consumers BRPOP): it has waited its turn already.
  redis.call('RPUSH', q, message(tpl, id, ticket, h[1] or '', q))
  redis.call('ZADD', qindex, tonumber(now), id)
end
"""

# KEYS: job, leases, schedule, stats, dead entry, dead index, account stats, queued index, waiting index
# ARGV: ticket, job_id, outcome, now_ms, history, due_ms, entry, reason, retention_ms, slot_ms,
#       template, key prefix, fallback queue
_FINISH = (
    _REQUEUE
    + """
local h = redis.call('HMGET', KEYS[1], 'ticket', 'state')
if h[1] ~= ARGV[1] or h[2] ~= 'running' then return 0 end
redis.call('ZREM', KEYS[2], ARGV[2])
local ended = false
if ARGV[3] == 'delivered' then
  redis.call('DEL', KEYS[1])
  redis.call('HINCRBY', KEYS[4], 'delivered', 1)
  redis.call('HINCRBY', KEYS[7], 'delivered', 1)
  ended = true
elseif ARGV[3] == 'retry' then
  redis.call('HSET', KEYS[1], 'state', 'scheduled', 'history', ARGV[5])
  redis.call('ZADD', KEYS[3], tonumber(ARGV[6]), ARGV[2])
  redis.call('HINCRBY', KEYS[4], 'retries', 1)
elseif ARGV[3] == 'defer' then
  redis.call('HSET', KEYS[1], 'state', 'scheduled', 'slot', ARGV[10])
  redis.call('HINCRBY', KEYS[1], 'attempts', -1)
  redis.call('ZADD', KEYS[3], tonumber(ARGV[6]), ARGV[2])
  redis.call('HINCRBY', KEYS[4], 'deferred', 1)
else
  redis.call('SET', KEYS[5], ARGV[7], 'PX', tonumber(ARGV[9]))
  redis.call('ZADD', KEYS[6], tonumber(ARGV[4]), ARGV[2])
  redis.call('DEL', KEYS[1])
  redis.call('HINCRBY', KEYS[4], 'dead:' .. ARGV[8], 1)
  redis.call('HINCRBY', KEYS[7], 'dead:' .. ARGV[8], 1)
  ended = true
end
if ended then
  -- Jobs waiting for this (identity) job go now, whichever way it ended.
  local w = ARGV[12] .. 'waiters:' .. ARGV[2]
  for _, id in ipairs(redis.call('LRANGE', w, 0, -1)) do
    local jk = ARGV[12] .. 'job:' .. id
    if redis.call('HGET', jk, 'state') == 'waiting' then
      redis.call('ZREM', KEYS[9], id)
      requeue(jk, id, KEYS[8], ARGV[4], ARGV[11], ARGV[13])
    end
  end
  redis.call('DEL', w)
end
return 1
"""
)

# KEYS: schedule, leases, default queue, queued index, stats
# ARGV: now_ms, limit, message template, key prefix
_PROMOTE = (
    _REQUEUE
    + """
local promoted, reaped = 0, 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))) do
  redis.call('ZREM', KEYS[1], id)
  local jk = ARGV[4] .. 'job:' .. id
  local state = redis.call('HGET', jk, 'state')
  if state == 'scheduled' then
    requeue(jk, id, KEYS[4], ARGV[1], ARGV[3], KEYS[3])
    promoted = promoted + 1
  else
    expired(state, KEYS[5])
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))) do
  redis.call('ZREM', KEYS[2], id)
  local jk = ARGV[4] .. 'job:' .. id
  local state = redis.call('HGET', jk, 'state')
  if state == 'running' then
    redis.call('HSET', jk, 'lost', ARGV[1])
    requeue(jk, id, KEYS[4], ARGV[1], ARGV[3], KEYS[3])
    reaped = reaped + 1
  else
    expired(state, KEYS[5])
  end
end
return {promoted, reaped}
"""
)

# KEYS: reconcile lock, queued index, default queue, waiting index, stats
# ARGV: now_ms, cutoff_ms, message template, key prefix, limit, scan_max, lock_ms
_RECONCILE = (
    _REQUEUE
    + """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', tonumber(ARGV[7])) then return {-1, 0, 0} end
local requeued, waiting, released = 0, 0, 0
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[5]))
for _, id in ipairs(ids) do
  local jk = ARGV[4] .. 'job:' .. id
  local h = redis.call('HMGET', jk, 'state', 'ticket', 'kind', 'queue', 'batch')
  local q = h[4] or KEYS[3]
  -- The job's message: its batch's, kept while it waits, or its own, rebuilt from the template.
  local msg = h[5] and redis.call('GET', ARGV[4] .. 'batch:' .. h[5])
  if not h[5] then msg = message(ARGV[3], id, h[2] or '', h[3] or '', q) end
  if h[1] ~= 'queued' then
    redis.call('ZREM', KEYS[2], id)
    expired(h[1], KEYS[5])
  elseif msg and redis.call('LPOS', q, msg, 'RANK', -1, 'MAXLEN', tonumber(ARGV[6])) then
    -- Still waiting its turn in a backlog: look again after another orphan period.
    redis.call('ZADD', KEYS[2], tonumber(ARGV[1]), id)
    waiting = waiting + 1
  else
    requeue(jk, id, KEYS[2], ARGV[1], ARGV[3], KEYS[3])
    redis.call('HINCRBY', KEYS[5], 'reconciled', 1)
    requeued = requeued + 1
  end
end
-- Jobs waiting for an identity job that vanished without ending (erased, expired) go now.
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[5]))) do
  local jk = ARGV[4] .. 'job:' .. id
  local h = redis.call('HMGET', jk, 'state', 'after')
  if h[1] ~= 'waiting' then
    redis.call('ZREM', KEYS[4], id)
    expired(h[1], KEYS[5])
  elseif h[2] and redis.call('EXISTS', ARGV[4] .. 'job:' .. h[2]) == 1 then
    redis.call('ZADD', KEYS[4], tonumber(ARGV[1]), id)
  else
    redis.call('ZREM', KEYS[4], id)
    requeue(jk, id, KEYS[2], ARGV[1], ARGV[3], KEYS[3])
    released = released + 1
  end
end
return {requeued, waiting, released}
"""
)


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
        self._claim = client.register_script(_CLAIM)
        self._claim_many = client.register_script(_CLAIM_MANY)
        self._finish = client.register_script(_FINISH)
        self._promote = client.register_script(_PROMOTE)
        self._reconcile = client.register_script(_RECONCILE)
        self._template = message_template()

    def claim(self, job_id: str, ticket: str, now_ms: int) -> Claim | str:
        """Take the job for one attempt, or say why not: ``gone``, ``stale`` or ``busy``."""
        r = self._claim(
            keys=[keys.job(job_id), keys.LEASES, keys.QUEUED], args=[ticket, now_ms + self.lease_ms, job_id]
        )
        return _claim_of(job_id, ticket, r)

    def claim_many(self, batch_id: str, tickets: list[tuple[str, str]], now_ms: int) -> list[Claim | str]:
        """`claim` for each (job_id, ticket) of one batch message, in one script."""
        args: list[Any] = [now_ms + self.lease_ms, keys.PREFIX]
        for job_id, ticket in tickets:
            args += [job_id, ticket]
        found = self._claim_many(keys=[keys.LEASES, keys.QUEUED, keys.batch(batch_id)], args=args)
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
    ) -> bool:
        """Run the finish script; with ``pipe`` only queue it there (its result comes from
        ``pipe.execute()``), and return True."""
        result = self._finish(
            keys=[
                keys.job(claim.job_id),
                keys.LEASES,
                keys.SCHEDULE,
                keys.STATS,
                keys.dead(claim.job_id),
                keys.DEAD_INDEX,
                keys.account_stats(claim.account),
                keys.QUEUED,
                keys.WAITING,
            ],
            args=[
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
            ],
            client=pipe,
        )
        return pipe is not None or bool(result)

    def delivered(self, claim: Claim, now_ms: int, pipe: redis.client.Pipeline | None = None) -> bool:
        """Count the job delivered and forget it. False when the delivery had been taken over."""
        return self._run_finish(claim, "delivered", now_ms, [], pipe=pipe)

    def schedule(
        self,
        claim: Claim,
        now_ms: int,
        delay_ms: int,
        history: list[dict[str, Any]],
        pipe: redis.client.Pipeline | None = None,
    ) -> bool:
        """Park the job in the retry schedule; a promoter queues it again when due."""
        return self._run_finish(claim, "retry", now_ms, history, due_ms=now_ms + delay_ms, pipe=pipe)

    def defer(self, claim: Claim, now_ms: int, due_ms: int, slot_ms: int) -> bool:
        """Park the job until its reserved rate-limit slot; the attempt is given back."""
        return self._run_finish(claim, "defer", now_ms, [], due_ms=due_ms, slot_ms=slot_ms)

    def dead_letter(
        self,
        claim: Claim,
        now_ms: int,
        reason: str,
        entry: dict[str, Any],
        pipe: redis.client.Pipeline | None = None,
    ) -> bool:
        """Move the job to the dead-letter store with ``entry`` as its record."""
        return self._run_finish(claim, "dead", now_ms, [], entry=json.dumps(entry), reason=reason, pipe=pipe)

    def promote(self, now_ms: int, limit: int = 500) -> tuple[int, int]:
        """Queue due retries and reclaim expired leases: (promoted, reaped)."""
        promoted, reaped = self._promote(
            keys=[keys.SCHEDULE, keys.LEASES, self.queue, keys.QUEUED, keys.STATS],
            args=[now_ms, limit, self._template, keys.PREFIX],
        )
        return int(promoted), int(reaped)

    def reconcile(
        self, now_ms: int, limit: int = 20, scan_max: int = 10_000, lock_ms: int = 1000
    ) -> tuple[int, int, int] | None:
        """Queue again the jobs that say ``queued`` but whose message is gone, and the jobs waiting
        for an identity job that no longer exists: (requeued, still waiting, released).

        Looks at up to ``limit`` jobs queued longer than ``orphan_ms`` ago, oldest first. One
        pass runs at a time across all workers, and at most one per ``lock_ms``: None means
        another promoter ran it just now.
        """
        requeued, waiting, released = self._reconcile(
            keys=[keys.RECONCILE_LOCK, keys.QUEUED, self.queue, keys.WAITING, keys.STATS],
            args=[now_ms, now_ms - self.orphan_ms, self._template, keys.PREFIX, limit, scan_max, lock_ms],
        )
        if int(requeued) < 0:
            return None
        return int(requeued), int(waiting), int(released)


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
        history,  # type: ignore[arg-type]
        int(r[4]) if r[4] else None,
        int(r[5]),
        int(r[6]),
        int(r[7]) if r[7] else None,
        r[8].decode() or accounts.DEFAULT,
    )
