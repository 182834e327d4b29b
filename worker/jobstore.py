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
push. Every queued job is indexed by the time it was queued in this round
(`producers.keys.QUEUED`); `JobStore.reconcile` looks at those that have waited past
``orphan_ms``, searches the queue for their current message, and queues again those whose
message is gone. Its cost is bounded: a few candidates per pass, each searched in at most
``scan_max`` messages from the consuming end of the queue. A job deeper than that in a long
backlog may be queued again while its old message still exists; the old message then finds
``stale``, so this costs an extra message, never a second delivery.

The reconciler never makes a job look younger: the index keeps when the job was queued
(`stats` reads true ages from it, so jobs on a queue no worker consumes show as overdue),
and the record keeps when the reconciler last found its message (``checked``), so it is
searched again only an orphan period later. A cursor (`producers.keys.RECONCILE_CURSOR`)
walks the overdue jobs a few per pass, so every one is looked at in turn.

Identity ordering (`producers.ordering`) at scale: when an identity job ends, its list of
waiters is renamed (`producers.keys.released`) and at most `FINISH_RELEASE` of them are
queued by the script that records the end; the rest are queued by the promoters,
`RELEASE_CHUNK` per script (`JobStore.release_waiters`), so no script grows with the list.
Identity jobs with waiters are indexed once each (`producers.keys.AWAITED`); the reconciler
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
from typing import Any

import redis

from producers import accounts, keys
from producers.queue import message_template
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
-- The template split once per script at its placeholders: a message is then one concatenation,
-- not four pattern substitutions over the whole text (43 us a message, most of a release's cost).
local tpl_parts, tpl_names
local function message(tpl, id, ticket, kind, queue)
  if not tpl_parts then
    tpl_parts, tpl_names = {}, {}
    local pos = 1
    while true do
      local s, e, name = string.find(tpl, '@(%u+)@', pos)
      if not s then break end
      tpl_parts[#tpl_parts + 1] = string.sub(tpl, pos, s - 1)
      tpl_names[#tpl_names + 1] = name
      pos = e + 1
    end
    tpl_parts[#tpl_parts + 1] = string.sub(tpl, pos)
  end
  local values = {JOB = id, TICKET = ticket, KIND = kind, QUEUE = queue}
  local out = {}
  for i = 1, #tpl_names do
    out[2 * i - 1] = tpl_parts[i]
    out[2 * i] = values[tpl_names[i]] or ('@' .. tpl_names[i] .. '@')
  end
  out[#out + 1] = tpl_parts[#tpl_parts]
  return table.concat(out)
end
-- keep_age: the job stays where it is in the queued index (a lost message queued again);
-- otherwise it starts a new round, queued now.
local function requeue(jk, id, qindex, now, tpl, fallback, keep_age)
  local round = redis.call('HINCRBY', jk, 'round', 1)
  local ticket = id .. '.' .. round
  local h = redis.call('HMGET', jk, 'kind', 'queue')
  local q = h[2] or fallback
  redis.call('HSET', jk, 'state', 'queued', 'ticket', ticket)
  redis.call('HDEL', jk, 'batch')
  -- RPUSH puts it at the head (consumers BRPOP): it has waited its turn already.
  redis.call('RPUSH', q, message(tpl, id, ticket, h[1] or '', q))
  if not keep_age then redis.call('ZADD', qindex, tonumber(now), id) end
end
-- Queue up to `budget` jobs of a released waiter list, oldest first: those still waiting (one
-- erased meanwhile is skipped; one whose record expired is counted). Returns the jobs queued,
-- the entries taken from the list and the entries left in it.
local function release(list, budget, waiting, qindex, stats, now, tpl, fallback, prefix)
  local ids = redis.call('LRANGE', list, 0, budget - 1)
  if #ids > 0 then redis.call('LTRIM', list, #ids, -1) end
  local queued = 0
  for _, id in ipairs(ids) do
    local jk = prefix .. 'job:' .. id
    local indexed = redis.call('ZREM', waiting, id)
    local state = redis.call('HGET', jk, 'state')
    if state == 'waiting' then
      requeue(jk, id, qindex, now, tpl, fallback)
      queued = queued + 1
    elseif indexed == 1 then
      expired(state, stats)
    end
  end
  return queued, #ids, redis.call('LLEN', list)
end
-- Identity job `id` ended (or vanished): its waiters go. The list is renamed under `token`, so
-- waiters of the same job replayed later start a list of their own; up to `budget` are queued
-- here and the rest, if any, by the promoters (the releasing index).
local function ended(id, token, budget, awaited, releasing, waiting, qindex, stats, now, tpl, fallback, prefix)
  redis.call('ZREM', awaited, id)
  local w = prefix .. 'waiters:' .. id
  if redis.call('EXISTS', w) == 0 then return 0 end
  local r = prefix .. 'released:' .. token
  redis.call('RENAME', w, r)
  local queued, _, left = 0, 0, 1
  if budget > 0 then queued, _, left = release(r, budget, waiting, qindex, stats, now, tpl, fallback, prefix) end
  if left > 0 then redis.call('ZADD', releasing, tonumber(now), token) end
  return queued
end
"""

# KEYS: job, leases, schedule, stats, dead entry, dead index, account stats, queued index, waiting index,
#       awaited index, releasing index, observed
# ARGV: ticket, job_id, outcome, now_ms, history, due_ms, entry, reason, retention_ms, slot_ms,
#       template, key prefix, fallback queue, waiters released here, then observed field/increment pairs
_FINISH = (
    _REQUEUE
    + """
local h = redis.call('HMGET', KEYS[1], 'ticket', 'state')
if h[1] ~= ARGV[1] or h[2] ~= 'running' then return 0 end
redis.call('ZREM', KEYS[2], ARGV[2])
local over = false
if ARGV[3] == 'delivered' then
  redis.call('DEL', KEYS[1])
  redis.call('HINCRBY', KEYS[4], 'delivered', 1)
  redis.call('HINCRBY', KEYS[7], 'delivered', 1)
  over = true
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
  over = true
end
if over then
  -- Jobs waiting for this (identity) job go now, whichever way it ended: a first chunk here,
  -- the rest from the promoters, so this script stays short however many wait.
  ended(ARGV[2], ARGV[1], tonumber(ARGV[14]), KEYS[10], KEYS[11], KEYS[9], KEYS[8], KEYS[4], ARGV[4], ARGV[11],
    ARGV[13], ARGV[12])
end
-- What the metrics observe of this end (`worker.observed`): field, increment, field, increment...
for i = 15, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[12], ARGV[i], ARGV[i + 1]) end
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

# KEYS: reconcile lock, queued index, default queue, waiting index, stats, awaited index, cursor
# ARGV: now_ms, cutoff_ms, message template, key prefix, limit, scan_max, lock_ms, waiters swept
_RECONCILE = (
    _REQUEUE
    + """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', tonumber(ARGV[7])) then return {-1, 0} end
local now, cutoff = tonumber(ARGV[1]), tonumber(ARGV[2])
local requeued, waiting = 0, 0
-- The overdue queued jobs (oldest first, by rank) from where the last pass stopped: a job found
-- waiting keeps its place and its age, so the next pass starts after it.
local pos = tonumber(redis.call('HGET', KEYS[7], 'queued') or '0')
local overdue = redis.call('ZCOUNT', KEYS[2], '-inf', cutoff)
if pos >= overdue then pos = 0 end
local kept, last = 0, math.min(pos + tonumber(ARGV[5]), overdue) - 1
-- (ZRANGE with a negative end counts from the end: nothing overdue must read nothing.)
for _, id in ipairs(last >= pos and redis.call('ZRANGE', KEYS[2], pos, last) or {}) do
  local jk = ARGV[4] .. 'job:' .. id
  local h = redis.call('HMGET', jk, 'state', 'ticket', 'kind', 'queue', 'batch', 'checked')
  local q = h[4] or KEYS[3]
  if h[1] ~= 'queued' then
    redis.call('ZREM', KEYS[2], id)
    expired(h[1], KEYS[5])
  elseif h[6] and tonumber(h[6]) > cutoff then
    kept = kept + 1  -- found (or queued again) less than an orphan period ago
  else
    kept = kept + 1
    -- The job's message: its batch's, kept while it waits, or its own, rebuilt from the template.
    local msg = h[5] and redis.call('GET', ARGV[4] .. 'batch:' .. h[5])
    if not h[5] then msg = message(ARGV[3], id, h[2] or '', h[3] or '', q) end
    if msg and redis.call('LPOS', q, msg, 'RANK', -1, 'MAXLEN', tonumber(ARGV[6])) then
      waiting = waiting + 1  -- still waiting its turn (or on a queue nobody consumes)
    else
      requeue(jk, id, KEYS[2], now, ARGV[3], KEYS[3], true)
      redis.call('HINCRBY', KEYS[5], 'reconciled', 1)
      requeued = requeued + 1
    end
    redis.call('HSET', jk, 'checked', now)
  end
end
redis.call('HSET', KEYS[7], 'queued', pos + kept)
-- Waiting jobs, a few per pass in turn: drop index entries of jobs no longer waiting, and make
-- sure each one's identity job is indexed for the vanished-job check (for waiters indexed
-- before that index existed).
pos = tonumber(redis.call('HGET', KEYS[7], 'waiting') or '0')
if pos >= redis.call('ZCARD', KEYS[4]) then pos = 0 end
kept = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[4], pos, pos + tonumber(ARGV[8]) - 1)) do
  local h = redis.call('HMGET', ARGV[4] .. 'job:' .. id, 'state', 'after')
  if h[1] ~= 'waiting' then
    redis.call('ZREM', KEYS[4], id)
    expired(h[1], KEYS[5])
  else
    kept = kept + 1
    if h[2] then redis.call('ZADD', KEYS[6], 'NX', now, h[2]) end
  end
end
redis.call('HSET', KEYS[7], 'waiting', pos + kept)
return {requeued, waiting}
"""
)

# Identity jobs with waiters, due for a check: one that no longer exists vanished without ending
# (erased, expired), so its waiters are released (by the promoters, `_RELEASE`).
# KEYS: awaited index, releasing index   ARGV: now_ms, cutoff_ms, limit, key prefix
_AWAITED = """
local checked, vanished = 0, 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))) do
  checked = checked + 1
  local w = ARGV[4] .. 'waiters:' .. id
  if redis.call('EXISTS', w) == 0 then
    redis.call('ZREM', KEYS[1], id)  -- nothing waits for it any more
  elseif redis.call('EXISTS', ARGV[4] .. 'job:' .. id) == 1 then
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]), id)  -- pending: look again an orphan period later
  else
    local token = id .. '.gone-' .. ARGV[1]
    redis.call('ZREM', KEYS[1], id)
    redis.call('RENAME', w, ARGV[4] .. 'released:' .. token)
    redis.call('ZADD', KEYS[2], tonumber(ARGV[1]), token)
    vanished = vanished + 1
  end
end
return {checked, vanished}
"""

# Queue the jobs of released waiter lists, oldest list first, up to a chunk in all.
# KEYS: releasing index, waiting index, queued index, stats
# ARGV: now_ms, chunk, message template, key prefix, fallback queue
_RELEASE = (
    _REQUEUE
    + """
local budget, queued = tonumber(ARGV[2]), 0
while budget > 0 do
  local token = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  if not token then break end
  local n, taken, left = release(ARGV[4] .. 'released:' .. token, budget, KEYS[2], KEYS[3], KEYS[4], ARGV[1],
    ARGV[3], ARGV[5], ARGV[4])
  queued = queued + n
  budget = budget - math.max(taken, 1)
  if left == 0 then redis.call('ZREM', KEYS[1], token) end
end
return {queued, redis.call('ZCARD', KEYS[1])}
"""
)

# Move jobs of one account that no worker serves: to another account's queue (their JSON and
# record name it), or to the dead-letter store. Only jobs still queued, scheduled or waiting and
# still of that account (and, when the target is the same account, not yet on its queue) move;
# a job claimed meanwhile is left to its worker.
# KEYS: queued index, schedule, waiting index, stats, account stats, dead index, awaited index,
#       releasing index
# ARGV: now_ms, 'move' or 'dead', from account, to account, to queue, template, key prefix,
#       dead-letter retention ms, fallback queue, reason, then per job: job_id, new job JSON or dead entry
_MOVE = (
    _REQUEUE
    + """
local now, prefix = ARGV[1], ARGV[7]
local movable = {queued = true, scheduled = true, waiting = true}
local done, skipped = 0, 0
for i = 11, #ARGV, 2 do
  local id, text = ARGV[i], ARGV[i + 1]
  local jk = prefix .. 'job:' .. id
  local h = redis.call('HMGET', jk, 'state', 'account', 'queue', 'ticket')
  local account = h[2] or 'default'
  if not (h[1] and movable[h[1]] and account == ARGV[3] and (ARGV[3] ~= ARGV[4] or h[3] ~= ARGV[5])) then
    skipped = skipped + 1
  elseif ARGV[2] == 'move' then
    redis.call('HSET', jk, 'job', text, 'account', ARGV[4], 'queue', ARGV[5])
    -- A queued job's message waits on the old queue: a new one (new ticket) on the new queue.
    if h[1] == 'queued' then requeue(jk, id, KEYS[1], now, ARGV[6], ARGV[9]) end
    done = done + 1
  else
    redis.call('SET', prefix .. 'dead:' .. id, text, 'PX', tonumber(ARGV[8]))
    redis.call('ZADD', KEYS[6], tonumber(now), id)
    redis.call('DEL', jk)
    for k = 1, 3 do redis.call('ZREM', KEYS[k], id) end
    redis.call('HINCRBY', KEYS[4], 'dead:' .. ARGV[10], 1)
    redis.call('HINCRBY', KEYS[5], 'dead:' .. ARGV[10], 1)
    -- It ended: jobs waiting for it (of the same account, so moved by this command too) go.
    ended(id, (h[4] or id) .. '.moved-' .. now, 0, KEYS[7], KEYS[8], KEYS[3], KEYS[1], KEYS[4], now, ARGV[6],
      ARGV[9], prefix)
    done = done + 1
  end
end
return {done, skipped}
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
        self._awaited = client.register_script(_AWAITED)
        self._release = client.register_script(_RELEASE)
        self._move = client.register_script(_MOVE)
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
        observe: list[Any] | None = None,
    ) -> bool:
        """Run the finish script; with ``pipe`` only queue it there (its result comes from
        ``pipe.execute()``), and return True. ``observe``: `worker.observed` fields and
        increments, counted when the outcome is."""
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
                keys.AWAITED,
                keys.RELEASING,
                observed.KEY,
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
                FINISH_RELEASE,
                *(observe or []),
            ],
            client=pipe,
        )
        return pipe is not None or bool(result)

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
        promoted, reaped = self._promote(
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
        requeued, waiting = self._reconcile(
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
            checked, gone = self._awaited(
                keys=[keys.AWAITED, keys.RELEASING], args=[now_ms, now_ms - self.orphan_ms, IDENTITY_CHUNK, keys.PREFIX]
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
            queued, left = self._release(
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

        Walks the indexes with ZSCAN and moves ``chunk`` jobs per script, so Redis keeps serving
        others while it runs; a job the walk meets twice is moved once. Raises
        ``redis.RedisError`` when Redis cannot be reached; the chunks moved before stay moved.
        """
        found = {"queued": 0, "scheduled": 0, "waiting": 0, "in_flight": 0, "moved": 0, "dead_lettered": 0}
        seen: set[str] = set()
        now_ms = int(time.time() * 1000)
        # Waiting jobs first: dead-lettered before their identity job, they are not released
        # onto the old queue when it ends.
        for index in (keys.WAITING, keys.SCHEDULE, keys.QUEUED, keys.LEASES):
            batch: list[str] = []
            for job_id, _score in self.client.zscan_iter(index, count=1000):
                batch.append(job_id.decode())
                if len(batch) >= chunk:
                    self._move_chunk(batch, account, to_account, to_queue, detail, dry_run, now_ms, seen, found)
                    batch = []
            if batch:
                self._move_chunk(batch, account, to_account, to_queue, detail, dry_run, now_ms, seen, found)
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
        done, _skipped = self._move(
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


def job_with_account(job_json: str, account: str) -> str:
    """The job's JSON naming ``account`` (first, as `producers.validation.job_json` writes it; no
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
