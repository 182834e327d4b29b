"""The atomic enqueue: job records, their indexes and their messages, written together.

One Lua script (`STORE`) writes the job records, their messages (`producers.store.message`) and the
``enqueued`` counter; inside MULTI/EXEC when identity ordering's markers go with it (and `GATE`
per job that may wait). Either all of it happens or none does.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from producers import accounts
from producers.store import erasure, keys, lua, ordering
from producers.store.message import MAX_BATCH, batch_message, celery_message, new_batch_id, ticket_for

if TYPE_CHECKING:
    import redis
    from redis.asyncio.client import Pipeline as AsyncPipeline

    from producers.settings import Settings

_ACCOUNT_FIRST = re.compile(r'^\{"account":"([A-Za-z0-9_-]{1,63})"')

# A job that depends on an identity job (`producers.store.ordering`): it waits if one of the identity
# jobs its markers name has not ended (its record still exists), else it is queued. An identity
# job that already has ``max_waiters`` waiters takes no more: the job is queued at once and
# counted (``waiters_over_cap``). Every command here is O(1) in the list's length (LLEN, RPUSH).
# KEYS: job, queued index, waiting index, awaited index, stats, marker...
# ARGV: job_id, now_ms, message, queue, prefix, ttl_ms, max_waiters
GATE = lua.script("producers.store", "queue_gate")


def account_of(job_json: str) -> str:
    """The account a stored job names, or `producers.accounts.DEFAULT`.

    Reads only the start of the text: `producers.job.validation.job_json` writes ``account``
    first when a job has one (it is the first field of every job model).
    """
    found = _ACCOUNT_FIRST.match(job_json)
    return found.group(1) if found else accounts.DEFAULT


def new_job_id() -> str:
    return uuid.uuid4().hex


def job_record(job_json: str, kind: str, now_ms: int, round_: int = 0) -> dict[str, Any]:
    """The fields of a freshly queued job's hash."""
    return {
        "job": job_json,
        "kind": kind,
        "account": account_of(job_json),
        "state": "queued",
        "round": round_,
        "attempts": 0,
        "history": "[]",
        "first_seen": now_ms,
    }


# Stores jobs and queues their messages: one command however many jobs, so a producer pays for
# one round trip's packing and parsing, not a dozen.
# KEYS: stats, queued index (`STORE_KEYS`)
# ARGV: now_ms, retention_ms, person_ttl_ms, enqueued, job count, then per job:
#       job key, '1' to index as queued, job_id, field count, fields..., person count, person keys...,
#       tie count, ties (person key, member)...
#       then message count, then per message: queue, message, batch key or ''
STORE = lua.script("producers.store", "queue_store_script")
STORE_KEYS = (keys.STATS, keys.QUEUED)


@dataclass
class _Entry:
    """One job about to be stored: its record and what indexes it."""

    job_id: str
    record: dict[str, Any]
    queue: str
    ticket: str
    kind: str
    persons: list[str]
    ties: list[tuple[str, str]] = field(default_factory=list)
    """(person key, member) links from a phone's or email's set to a customer id's set, so
    `erase` finds the id after the job that showed the link has ended (`producers.store.erasure`)."""
    links: list[str] = field(default_factory=list)
    """Marker keys this identity job sets (`producers.store.ordering`)."""
    needs: list[str] = field(default_factory=list)
    """Marker keys of the identity jobs this job may have to wait for."""


def _entry(settings: Settings, job_id: str, record: Mapping[str, Any], erasure_key: bytes, order: bool) -> _Entry:
    account = str(record.get("account") or accounts.DEFAULT)
    queue = settings.queue_for(account)
    ticket = ticket_for(job_id, int(record["round"]))
    kind, text = str(record.get("kind", "")), str(record["job"])
    job = erasure.parsed(text)
    entry = _Entry(
        job_id,
        {**record, "ticket": ticket, "queue": queue},
        queue,
        ticket,
        kind,
        *erasure.index_of(erasure_key, job, account),
    )
    # Cheap test first: a job can need a link only if it names external identifiers at all.
    if order and isinstance(job, dict) and (kind == "identity" or kind in ordering.USER_KINDS):
        entry.links = [ordering.marker(erasure_key, account, i) for i in ordering.links(job)]
        entry.needs = [ordering.marker(erasure_key, account, i) for i in ordering.needs(job)]
    return entry


def _store_args(
    settings: Settings, entries: list[_Entry], messages: list[tuple[str, str, str]], now_ms: int, enqueued: int
) -> list[Any]:
    """`STORE`'s arguments (its keys are `STORE_KEYS`): the records (expiring after the job retention),
    their persons (`producers.store.erasure`; a person's set outlives every job in it, dead letters
    included), the queued index for jobs not waiting, and ``messages`` as (queue, message,
    batch key or '')."""
    args: list[Any] = [now_ms, settings.job_retention_ms, settings.person_index_ms, enqueued]
    args.append(len(entries))
    for e in entries:
        fields = [x for item in e.record.items() for x in item]
        args += [keys.job(e.job_id), "0" if e.needs else "1", e.job_id, len(fields), *fields, len(e.persons)]
        args += e.persons
        args.append(len(e.ties))
        args += [x for tie in e.ties for x in tie]
    args.append(len(messages))
    for message in messages:
        args += message
    return args


def _store(
    pipe: redis.client.Pipeline | AsyncPipeline,
    settings: Settings,
    entries: list[_Entry],
    messages: list[tuple[str, str, str]],
    now_ms: int,
    enqueued: int,
) -> None:
    STORE.queue_in_transaction(pipe, STORE_KEYS, _store_args(settings, entries, messages, now_ms, enqueued))


def add_job(
    pipe: redis.client.Pipeline,
    settings: Settings,
    job_id: str,
    record: Mapping[str, Any],
    now_ms: int,
    erasure_key: bytes,
) -> None:
    """Add to ``pipe`` the command that stores one job record (a replayed job: no identity
    ordering, not counted as enqueued), indexes it as queued and by the people it mentions, and
    queues its own message on its account's queue. The record's ``round`` picks the ticket; the
    caller executes the pipeline, so storing and queueing happen together or not at all.
    """
    e = _entry(settings, job_id, record, erasure_key, order=False)
    _store(pipe, settings, [e], [(e.queue, celery_message(job_id, e.ticket, e.queue, e.kind), "")], now_ms, 0)


def _messages(settings: Settings, ready: list[_Entry]) -> list[tuple[str, str, str]]:
    """Messages for jobs that wait for nothing: one per `MAX_BATCH` jobs of a queue, or a plain
    one-job message for a job alone on its queue. A queue's jobs are batched kind by kind (in
    the order each kind first came): a worker sends a batch as one group per lane (one slot
    reservation, one pipeline of outcomes), and a batch of six kinds cost six groups of five.

    Each job of a batch names it in its record (``batch``), and the batch's message is kept at
    `producers.store.keys.batch` until a worker takes it, so the reconciler can find it in the queue.
    """
    by_queue: dict[str, list[_Entry]] = {}
    for e in ready:
        by_queue.setdefault(e.queue, []).append(e)
    messages = []
    for queue, arrived in by_queue.items():
        by_kind: dict[str, list[_Entry]] = {}
        for e in arrived:
            by_kind.setdefault(e.kind, []).append(e)
        members = [e for same in by_kind.values() for e in same]
        for start in range(0, len(members), MAX_BATCH):
            chunk = members[start : start + MAX_BATCH]
            if len(chunk) == 1:
                e = chunk[0]
                messages.append((queue, celery_message(e.job_id, e.ticket, queue, e.kind), ""))
                continue
            batch_id = new_batch_id()
            for e in chunk:
                e.record["batch"] = batch_id
            message = batch_message(batch_id, [e.ticket for e in chunk], queue, [e.kind for e in chunk])
            messages.append((queue, message, keys.batch(batch_id)))
    return messages


def push_jobs(
    client: redis.Redis,
    settings: Settings,
    jobs: Iterable[tuple[str, str, str]],
    erasure_key: bytes,
    once: Mapping[str, Iterable[str]] | None = None,
) -> set[str]:
    """Store and queue new jobs atomically: ``jobs`` yields (job_id, kind, job_json).

    ``once`` maps marker keys (`keys.seen`) to the ids of the jobs each one guards: the jobs of
    a marker already set are left out, and the other markers are set, expiring after the
    freshness window, in the same transaction as the jobs (WATCHed, so two copies of one
    message pushed at once queue it once). Returns the markers that were already set.
    Raises ``redis.RedisError`` (nothing queued) when Redis cannot be reached.
    """
    from redis.exceptions import WatchError

    jobs = list(jobs)
    if not once:
        plan = plan_push(settings, jobs, erasure_key)
        if plan.store_args is not None:
            STORE(client, STORE_KEYS, plan.store_args)
        elif plan.entries:
            pipe = client.pipeline(transaction=True)
            add_push(pipe, settings, plan)
            pipe.execute()
        return set()
    markers = list(once)
    with client.pipeline(transaction=True) as pipe:
        for _ in range(5):
            try:
                pipe.watch(*markers)
                found = {m for m, v in zip(markers, pipe.mget(markers), strict=True) if v is not None}
                left_out = {job_id for m in found for job_id in once[m]}
                pipe.multi()
                for marker in markers:
                    if marker not in found:
                        pipe.set(marker, 1, px=int(settings.freshness_s * 1000))
                now_ms = int(time.time() * 1000)
                kept = [j for j in jobs if j[0] not in left_out]
                add_push(pipe, settings, PushPlan(now_ms, _entries(settings, kept, erasure_key, now_ms)))
                pipe.execute()
                return found
            except WatchError:
                continue  # another copy was pushed meanwhile: look again
    raise WatchError("messageId markers kept changing; nothing queued")


def _entries(settings: Settings, jobs: list[tuple[str, str, str]], erasure_key: bytes, now_ms: int) -> list[_Entry]:
    return [_entry(settings, job_id, job_record(data, kind, now_ms), erasure_key, True) for job_id, kind, data in jobs]


@dataclass
class PushPlan:
    """What queues a push of new jobs, computed before any Redis call (`plan_push`), so the sync
    and the asyncio producers send the same commands and differ only in how they send them."""

    now_ms: int
    entries: list[_Entry]
    store_args: list[Any] | None = None
    """`STORE`'s arguments (keys: `STORE_KEYS`) when that one script queues every job (no
    identity ordering involved); None: `add_push` fills a MULTI/EXEC pipeline instead."""


def plan_push(settings: Settings, jobs: Sequence[tuple[str, str, str]], erasure_key: bytes) -> PushPlan:
    """The plan for storing and queueing ``jobs`` (job_id, kind, job_json), stamped now."""
    now_ms = int(time.time() * 1000)
    entries = _entries(settings, list(jobs), erasure_key, now_ms)
    if entries and not any(e.links or e.needs for e in entries):
        # No identity ordering involved: one script, atomic on its own, and the cheapest call
        # redis-py makes (no pipeline, no MULTI/EXEC; the script's text only once).
        messages = _messages(settings, entries)
        return PushPlan(now_ms, entries, _store_args(settings, entries, messages, now_ms, len(entries)))
    return PushPlan(now_ms, entries)


def add_push(pipe: redis.client.Pipeline | AsyncPipeline, settings: Settings, plan: PushPlan) -> None:
    """Add to ``pipe`` what stores and queues ``plan.entries``; the caller executes it. Adding
    commands sends nothing, on a redis.asyncio pipeline as on a sync one (neither is WATCHing)."""
    entries, now_ms = plan.entries, plan.now_ms
    if entries:
        _store(pipe, settings, entries, _messages(settings, [e for e in entries if not e.needs]), now_ms, len(entries))
    # Identity ordering (`producers.store.ordering`): every link first, so a job in this same push
    # that needs one finds it; then each such job waits, or is queued if its identity job ended.
    for e in entries:
        for marker in e.links:
            pipe.set(marker, e.job_id, px=settings.job_retention_ms)
    for e in entries:
        if e.needs:
            gate_keys = [keys.job(e.job_id), keys.QUEUED, keys.WAITING, keys.AWAITED, keys.STATS, *e.needs]
            message = celery_message(e.job_id, e.ticket, e.queue, e.kind)
            args: list[str | int] = [
                e.job_id,
                now_ms,
                message,
                e.queue,
                keys.PREFIX,
                settings.job_retention_ms,
                settings.attentive_max_waiters,
            ]
            GATE.queue_in_transaction(pipe, gate_keys, args)
