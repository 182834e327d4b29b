"""What goes on the queue, and the atomic enqueue.

The broker message carries only the job id; the job itself (with its personal data) sits in
a Redis hash (`producers.keys.job`). So Flower, broker events and Celery's logs see ids,
never phone numbers or emails.

Messages are written straight into kombu's Redis list in Celery's message protocol v2,
in the same MULTI/EXEC as the job record and the ``enqueued`` counter: either all three
happen or none does, and a producer does not need Celery (heavy to import, slow to send).
The worker's promoter builds its messages from the same template.

Each message's task id is a *ticket* ``<job_id>.<round>``. The job record holds the ticket
that may run it; a copy of an older message (kombu restoring an unacked message, a
duplicate push) carries an older ticket and is ignored. That fencing is what makes a
crash-restored or promoted message run at most once.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from producers import accounts, erasure, keys, ordering

if TYPE_CHECKING:
    import redis

    from producers.settings import Settings

TASK_NAME = "attentive.deliver"
BATCH_TASK_NAME = "attentive.deliver_batch"
MAX_BATCH = 32
"""Most jobs one message carries (`batch_message`): Celery's cost per message is shared by
them. Jobs queued together (``enqueue_many``, a collector batch) go in batches."""
JOB_PLACEHOLDER = "@JOB@"
TICKET_PLACEHOLDER = "@TICKET@"
KIND_PLACEHOLDER = "@KIND@"
QUEUE_PLACEHOLDER = "@QUEUE@"

_ACCOUNT_FIRST = re.compile(r'^\{"account":"([A-Za-z0-9_-]{1,63})"')

# A job that depends on an identity job (`producers.ordering`): it waits if one of the identity
# jobs its markers name has not ended (its record still exists), else it is queued.
# KEYS: job, queued index, waiting index, marker...   ARGV: job_id, now_ms, message, queue, prefix, ttl_ms
_GATE = """
for i = 4, #KEYS do
  local dep = redis.call('GET', KEYS[i])
  if dep and redis.call('EXISTS', ARGV[5] .. 'job:' .. dep) == 1 then
    redis.call('HSET', KEYS[1], 'state', 'waiting', 'after', dep)
    local w = ARGV[5] .. 'waiters:' .. dep
    redis.call('RPUSH', w, ARGV[1])
    redis.call('PEXPIRE', w, tonumber(ARGV[6]))
    redis.call('ZADD', KEYS[3], tonumber(ARGV[2]), ARGV[1])
    return 1
  end
end
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), ARGV[1])
redis.call('LPUSH', ARGV[4], ARGV[3])
return 0
"""


def ticket_for(job_id: str, round_: int) -> str:
    return f"{job_id}.{round_}"


def celery_message(job_id: str, ticket: str, queue: str, kind: str = "") -> str:
    """A Celery protocol v2 message, as kombu's Redis transport stores it, for one delivery.

    The body is plain JSON (no ``body_encoding``), which kombu passes through unchanged.
    ``argsrepr`` is what Flower displays: the job id and kind, nothing personal.
    """
    body = json.dumps([[job_id], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    return json.dumps(
        {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": TASK_NAME,
                "id": ticket,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": ticket,
                "parent_id": None,
                "argsrepr": f"('{job_id}',) {kind}".rstrip(),
                "kwargsrepr": "{}",
                "origin": "attentive-relay",
                "ignore_result": True,
            },
            "properties": {
                "correlation_id": ticket,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "delivery_tag": ticket,
            },
        },
        separators=(",", ":"),
    )


def batch_message(batch_id: str, tickets: list[str], queue: str, kinds: list[str]) -> str:
    """One Celery message for several jobs (`BATCH_TASK_NAME`): its task id is the batch id, its
    argument the jobs' tickets. Flower shows the number of jobs and their kinds, nothing else."""
    counts = Counter(kinds)
    summary = ", ".join(f"{kind} x{n}" for kind, n in sorted(counts.items()))
    message = json.loads(celery_message(batch_id, batch_id, queue))
    message["body"] = json.dumps([[tickets], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    headers = message["headers"]
    headers["task"] = BATCH_TASK_NAME
    headers["argsrepr"] = f"({len(tickets)} jobs: {summary})"
    return json.dumps(message, separators=(",", ":"))


def tickets_in(message: str | bytes) -> list[str]:
    """The tickets a queued message carries: its task id, or a batch's list."""
    parsed = json.loads(message)
    if parsed["headers"]["task"] == BATCH_TASK_NAME:
        return list(json.loads(parsed["body"])[0][0])
    return [parsed["headers"]["id"]]


def job_of(ticket: str) -> str:
    """The job id a ticket (``<job_id>.<round>``) names."""
    return ticket.rpartition(".")[0]


def new_batch_id() -> str:
    return "batch-" + uuid.uuid4().hex


def message_template() -> str:
    """`celery_message` with placeholders, for the job store's Lua scripts to fill in."""
    return celery_message(JOB_PLACEHOLDER, TICKET_PLACEHOLDER, QUEUE_PLACEHOLDER, KIND_PLACEHOLDER)


def account_of(job_json: str) -> str:
    """The account a stored job names, or `producers.accounts.DEFAULT`.

    Reads only the start of the text: `producers.validation.job_json` writes ``account``
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


def add_job(
    pipe: redis.client.Pipeline,
    settings: Settings,
    job_id: str,
    record: Mapping[str, Any],
    now_ms: int,
    erasure_key: bytes,
    *,
    order: bool = False,
    push: bool = True,
) -> tuple[str, str, str] | None:
    """Add to ``pipe`` the commands that store a job record (expiring after the job retention),
    index it as queued and by the people it mentions (`producers.erasure`), and queue its message
    on its account's queue.

    With ``order`` (a new job, not a replay), identity ordering applies (`producers.ordering`):
    an identity job marks the ids it links, and a job that needs one of them waits while that
    identity job has not ended. The record's ``round`` picks the ticket; the caller executes
    the pipeline, so storing and queueing happen together or not at all.

    Without ``push``, a job that does not wait for an identity job is indexed as queued but
    its message is left to the caller, to send in a batch: returns its (queue, ticket, kind).
    """
    ticket = ticket_for(job_id, int(record["round"]))
    job_key = keys.job(job_id)
    account = str(record.get("account") or accounts.DEFAULT)
    queue = settings.queue_for(account)
    pipe.hset(job_key, mapping={**record, "ticket": ticket, "queue": queue})
    pipe.pexpire(job_key, settings.job_retention_ms)
    # A person's set outlives every job in it, dead letters included.
    person_ttl_ms = max(settings.job_retention_ms, settings.dlq_retention_ms)
    for person in erasure.mentions(str(record["job"])):
        person_key = erasure.person_key(erasure_key, person)
        pipe.sadd(person_key, job_id)
        pipe.pexpire(person_key, person_ttl_ms)
    kind, text = str(record.get("kind", "")), str(record["job"])
    message = celery_message(job_id, ticket, queue, kind)
    # Cheap test first: a job can need a link only if it names external identifiers at all.
    if order and (kind == "identity" or (kind in ordering.USER_KINDS and '"externalIdentifiers"' in text)):
        job = json.loads(text)
        for external_id in ordering.links(job):
            pipe.set(ordering.marker(erasure_key, account, external_id), job_id, px=settings.job_retention_ms)
        needed = [ordering.marker(erasure_key, account, i) for i in ordering.needs(job)]
        if needed:
            pipe.register_script(_GATE)(
                keys=[job_key, keys.QUEUED, keys.WAITING, *needed],
                args=[job_id, now_ms, message, queue, keys.PREFIX, settings.job_retention_ms],
            )
            return None
    pipe.zadd(keys.QUEUED, {job_id: now_ms})
    if not push:
        return queue, ticket, kind
    pipe.lpush(queue, message)
    return None


def _push_batches(
    pipe: redis.client.Pipeline, settings: Settings, ready: list[tuple[str, str, str]], now_ms: int
) -> None:
    """Queue jobs whose records are in ``pipe`` (from `add_job` without ``push``): one message
    per `MAX_BATCH` jobs of a queue, or a plain one-job message for a job alone on its queue.

    Each job of a batch names it in its record (``batch``), and the batch's message is kept at
    `producers.keys.batch` until a worker takes it, so the reconciler can find it in the queue.
    """
    by_queue: dict[str, list[tuple[str, str]]] = {}
    for queue, ticket, kind in ready:
        by_queue.setdefault(queue, []).append((ticket, kind))
    for queue, members in by_queue.items():
        for start in range(0, len(members), MAX_BATCH):
            chunk = members[start : start + MAX_BATCH]
            if len(chunk) == 1:
                ticket, kind = chunk[0]
                pipe.lpush(queue, celery_message(job_of(ticket), ticket, queue, kind))
                continue
            batch_id = new_batch_id()
            message = batch_message(batch_id, [t for t, _ in chunk], queue, [k for _, k in chunk])
            pipe.set(keys.batch(batch_id), message, px=settings.job_retention_ms)
            for ticket, _ in chunk:
                pipe.hset(keys.job(job_of(ticket)), "batch", batch_id)
            pipe.lpush(queue, message)


def push_jobs(
    client: redis.Redis,
    settings: Settings,
    jobs: Iterable[tuple[str, str, str]],
    erasure_key: bytes,
    once: Mapping[str, Iterable[str]] | None = None,
) -> set[str]:
    """Store and queue new jobs in one MULTI/EXEC: ``jobs`` yields (job_id, kind, job_json).

    ``once`` maps marker keys (`keys.seen`) to the ids of the jobs each one guards: the jobs of
    a marker already set are left out, and the other markers are set, expiring after the
    freshness window, in the same transaction as the jobs (WATCHed, so two copies of one
    message pushed at once queue it once). Returns the markers that were already set.
    Raises ``redis.RedisError`` (nothing queued) when Redis cannot be reached.
    """
    from redis.exceptions import WatchError

    jobs = list(jobs)
    if not once:
        _push(client.pipeline(transaction=True), settings, jobs, erasure_key)
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
                _push(pipe, settings, [j for j in jobs if j[0] not in left_out], erasure_key)
                return found
            except WatchError:
                continue  # another copy was pushed meanwhile: look again
    raise WatchError("messageId markers kept changing; nothing queued")


def _push(
    pipe: redis.client.Pipeline, settings: Settings, jobs: list[tuple[str, str, str]], erasure_key: bytes
) -> None:
    now_ms = int(time.time() * 1000)
    ready = []
    for job_id, kind, data in jobs:
        record = job_record(data, kind, now_ms)
        batched = add_job(pipe, settings, job_id, record, now_ms, erasure_key, order=True, push=False)
        if batched is not None:
            ready.append(batched)
    _push_batches(pipe, settings, ready, now_ms)
    if jobs:
        pipe.hincrby(keys.STATS, "enqueued", len(jobs))
    if jobs or pipe.command_stack:
        pipe.execute()
