"""The erasure index, and erasing a person: every job and dead letter that mentions them.

A deletion request (CCPA, GDPR) names a phone number or an email. Scanning every value in
Redis for it would be slow and would need the value in the clear; instead, at enqueue each job
id is added to one set per person it mentions (`producers.keys.person`), named by a keyed hash
(HMAC-SHA256) of the normalized phone number or the lower-cased email. The key is
``ATTENTIVE_ERASURE_KEY`` or, when unset, a random key created once in Redis: without the key
a set's name does not reveal whose it is, even for a value as guessable as a phone number.

What counts as mentioning a person: the ``phone`` fields (a user's, an identity call's) and
Yotpo's ``phone_number`` (always E.164 by then), and every email address anywhere in the job,
properties included. A phone number written inside free text is not found.

`erase` deletes, in one Lua script (so it works while workers run), the job records (in any
state: queued, scheduled, in flight), their index entries and the dead letters of every job in
the person's set, then the set itself. A delivery in flight at that moment finds its job gone
and records nothing. Afterwards no Redis key holds the value; copies in the append-only file
or an RDB snapshot go only when Redis rewrites them (README, "Erasure").
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from producers import keys
from producers.errors import InvalidJob, Problem
from producers.rules import check_email, normalize_phone

if TYPE_CHECKING:
    import redis

    from producers.settings import Settings

_PHONE_FIELD = re.compile(r'"phone(?:_number)?":"(\+[0-9]{4,20})"')
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")

_ERASE = """
local jobs, dead = 0, 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  jobs = jobs + redis.call('DEL', ARGV[1] .. 'job:' .. id)
  dead = dead + redis.call('DEL', ARGV[1] .. 'dead:' .. id)
  for i = 2, 6 do redis.call('ZREM', KEYS[i], id) end
end
redis.call('DEL', KEYS[1])
if jobs > 0 then redis.call('HINCRBY', KEYS[7], 'erased', jobs) end
return {jobs, dead}
"""


def mentions(job_json: str) -> set[str]:
    """The people a job mentions, normalized: E.164 phone numbers and lower-cased emails."""
    found = {m.group(1) for m in _PHONE_FIELD.finditer(job_json)}
    found.update(m.group(0).lower() for m in _EMAIL.finditer(job_json))
    return found


def secret(client: redis.Redis, settings: Settings) -> bytes:
    """The keyed hash's key: ATTENTIVE_ERASURE_KEY, or the one kept in Redis (created if absent)."""
    if settings.attentive_erasure_key is not None:
        return settings.attentive_erasure_key.get_secret_value().encode()
    client.set(keys.ERASURE_KEY, secrets.token_hex(32), nx=True)
    value = client.get(keys.ERASURE_KEY)
    assert value is not None
    return bytes(value)


def person_key(key: bytes, identifier: str) -> str:
    """The Redis key of the set of jobs that mention ``identifier`` (already normalized)."""
    return keys.person(hmac.new(key, identifier.encode(), hashlib.sha256).hexdigest())


def identifier(settings: Settings, phone: str | None = None, email: str | None = None) -> str:
    """A phone number or an email normalized as `mentions` finds it; `InvalidJob` naming the field."""
    try:
        if phone is not None:
            return normalize_phone(phone, settings.attentive_default_region)
        if email is not None:
            return check_email(email.strip()).lower()
    except ValueError as exc:
        field = "phone" if phone is not None else "email"
        raise InvalidJob([Problem(field, str(exc))]) from None
    raise InvalidJob([Problem("", "give a phone number or an email")])


@dataclass(frozen=True)
class Erased:
    jobs: int
    """Job records deleted (queued, scheduled or in flight)."""
    dead_letters: int
    """Dead-letter entries deleted."""
    accounts: tuple[str, ...] = ()
    """The accounts the erased jobs and dead letters were queued under, sorted."""


def erase(client: redis.Redis, settings: Settings, person: str) -> Erased:
    """Delete every job and dead letter that mentions ``person`` (see `identifier`)."""
    index = person_key(secret(client, settings), person)
    found = _accounts(client, [m.decode() for m in client.smembers(index)])
    script = client.register_script(_ERASE)
    jobs, dead = script(
        keys=[
            index,
            keys.QUEUED,
            keys.SCHEDULE,
            keys.LEASES,
            keys.DEAD_INDEX,
            keys.WAITING,
            keys.STATS,
        ],
        args=[keys.PREFIX],
    )
    return Erased(int(jobs), int(dead), found)


def _accounts(client: redis.Redis, ids: list[str]) -> tuple[str, ...]:
    """The accounts of these jobs (live records and dead letters)."""
    import json

    from producers import accounts

    found: set[str] = set()
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(keys.job(job_id), "account")
        pipe.get(keys.dead(job_id))
    replies = pipe.execute() if ids else []
    for account, dead in zip(replies[::2], replies[1::2], strict=True):
        if account:
            found.add(account.decode())
        if dead:
            try:
                job = json.loads(dead).get("job")
                job = json.loads(job) if isinstance(job, str) else job
                found.add(str(job.get("account") or accounts.DEFAULT))
            except (ValueError, AttributeError):
                found.add(accounts.DEFAULT)
    return tuple(sorted(found))
