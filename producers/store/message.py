"""The Celery messages a job travels in, as the producers and the job store's scripts write them.

The broker message carries only the job id; the job itself (with its personal data) sits in
a Redis hash (`producers.store.keys.job`). So Flower, broker events and Celery's logs see ids,
never phone numbers or emails.

Messages are written straight into kombu's Redis list in Celery's message protocol v2 (by
`producers.store.enqueue`'s script, and the job store's scripts from `message_template`), so a
producer does not need Celery (heavy to import, slow to send). Jobs pushed together share
messages, up to `MAX_BATCH` each (`batch_message`).

Each message's task id is a *ticket* ``<job_id>.<round>``. The job record holds the ticket
that may run it; a copy of an older message (kombu restoring an unacked message, a
duplicate push) carries an older ticket and is ignored. That fencing is what makes a
crash-restored or promoted message run at most once.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter

TASK_NAME = "attentive.deliver"
BATCH_TASK_NAME = "attentive.deliver_batch"
MAX_BATCH = 32
"""Most jobs one message carries (`batch_message`): Celery's cost per message is shared by
them. Jobs queued together (``enqueue_many``, a collector batch) go in batches."""
JOB_PLACEHOLDER = "@JOB@"
TICKET_PLACEHOLDER = "@TICKET@"
KIND_PLACEHOLDER = "@KIND@"
QUEUE_PLACEHOLDER = "@QUEUE@"


def ticket_for(job_id: str, round_: int) -> str:
    return f"{job_id}.{round_}"


def celery_message(job_id: str, ticket: str, queue: str, kind: str = "") -> str:
    """A Celery protocol v2 message, as kombu's Redis transport stores it, for one delivery.

    The body is plain JSON (no ``body_encoding``), which kombu passes through unchanged.
    ``argsrepr`` is what Flower displays: the job id and kind, nothing personal. Filled in
    from `message_template`, as the job store's scripts fill it in, so both make the same
    bytes (the reconciler finds a message by them). Ids, tickets, queue names and kinds never
    hold characters JSON escapes.
    """
    return (
        _TEMPLATE.replace(JOB_PLACEHOLDER, job_id)
        .replace(TICKET_PLACEHOLDER, ticket)
        .replace(QUEUE_PLACEHOLDER, queue)
        .replace(KIND_PLACEHOLDER, kind)
    )


def _build_message(job_id: str, ticket: str, queue: str, kind: str) -> str:
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
                "argsrepr": f"('{job_id}',) {kind}",
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


_TEMPLATE = _build_message(JOB_PLACEHOLDER, TICKET_PLACEHOLDER, QUEUE_PLACEHOLDER, KIND_PLACEHOLDER)


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
    return _TEMPLATE
