"""The erasure index, and erasing a person: every job and dead letter that is about them.

A deletion request (CCPA, GDPR) names a phone number, an email or a customer id. Scanning
every value in Redis for it would be slow and would need the value in the clear; instead, at
enqueue each job id is added to one set per identifier it holds (`producers.store.keys.person`),
named by a keyed hash (HMAC-SHA256) of the identifier's canonical form. The key is
``ATTENTIVE_ERASURE_KEY`` or, when unset, a random key created once in Redis: without the key
a set's name does not reveal whose it is, even for a value as guessable as a phone number.

Canonical forms, one per identifier, used by enqueue, the index and `erase` alike:

- a phone number: E.164, as validation normalizes it (`producers.job.rules.normalize_phone`);
- an email: the whole address validation accepts (`producers.job.rules.check_email`), lower-cased
  and in Unicode NFC, so ``Jöe@Exämple.com`` typed either way is one person, and
  ``o'brien@example.com`` is never ``brien@example.com``;
- a customer id: its kind and value within its account (``clientUserId``, ``shopifyId``,
  ``klaviyoId``, a custom identifier's name and value, Yotpo's ``external_id``): the same
  ``clientUserId`` in two brands is two people.

What a job holds: every ``phone``/``phone_number`` field in E.164, every string that is a whole
email address (properties included; in free text, each whitespace-separated word that is one),
and its customer ids. A phone number written inside free text is not found.

`erase` follows the links the relay itself holds: from the person's jobs it learns their
customer ids, then takes every job that carries one of those ids too (an event known only by a
``clientUserId``, waiting for its identity call), for a few rounds. It deletes, in one Lua
script (so it works while workers run), the job records in any state (waiting, queued,
scheduled, batched, in flight), their index entries, their dead letters, the ordering markers
and waiter lists of their identity jobs, and the sets. Then `worker.lease` fences any attempt
in flight: `erase` bumps `producers.store.keys.ERASURE_EPOCH` and waits `FENCE_WAIT_S` (only when one
of the jobs was running), after which no worker sends one of them. Copies in the append-only
file or an RDB snapshot go only when Redis rewrites them (docs/privacy.md, "Erasure").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from producers import accounts
from producers.errors import InvalidJob, Problem
from producers.job.rules import check_email, normalize_phone
from producers.store import keys, lua, ordering, replies

if TYPE_CHECKING:
    import redis

    from producers.settings import Settings

_E164 = re.compile(r"\+[0-9]{4,20}")
_PHONE_KEYS = frozenset({"phone", "phone_number"})
#: What separates words in free text: the characters an email address may not hold.
_WORDS = re.compile(r'[\s"<>,;]+')
#: Punctuation around an address in free text ("(mail a@b.com).").
_AROUND = "()[]{}'.:!?*"
#: Customer-id fields, wherever a job kind puts them.
_ID_FIELDS = ("clientUserId", "shopifyId", "klaviyoId")
#: A member of a person's set that names a customer id's set (not a job id): the job that
#: showed the link may have ended, and its record with it, before the person is erased.
LINK = "link:"
#: Rounds of following customer ids to more jobs; a person has few ids, so two suffice.
MAX_ROUNDS = 4
#: How long `erase` waits, when one of its jobs was in flight, for every worker to have
#: looked at the erasure epoch (`worker.lease.EPOCH_FRESH_S`) plus a request's start.
FENCE_WAIT_S = 3.0

_ERASE = lua.script("producers.store", "erasure_erase")


def canonical_email(raw: str) -> str:
    """The form an email is indexed and erased by; `ValueError` if validation refuses it."""
    return unicodedata.normalize("NFC", check_email(raw).lower())


def customer_id(account: str, kind: str, value: str) -> str:
    """The canonical form of a customer id: ``kind`` (``clientUserId``, ``shopifyId``,
    ``klaviyoId``, ``custom:<name>``, ``yotpo``) and ``value`` within ``account``."""
    return f"id\x00{account}\x00{kind}\x00{value}"


def _emails_in(text: str) -> Iterator[str]:
    try:
        yield canonical_email(text)
        return
    except ValueError:
        pass
    for word in _WORDS.split(text):
        if "@" not in word:
            continue
        for candidate in (word, word.strip(_AROUND)):
            try:
                yield canonical_email(candidate)
                break
            except ValueError:
                continue


def people(job: Any) -> set[str]:
    """The phone numbers and emails ``job`` (parsed JSON) holds, in canonical form."""
    found: set[str] = set()
    stack: list[tuple[Any, Any]] = [(None, job)]
    while stack:
        name, value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.items())
            found.update(e for k in value if isinstance(k, str) and "@" in k for e in _emails_in(k))
        elif isinstance(value, list):
            stack.extend((name, v) for v in value)
        elif isinstance(value, str):
            if name in _PHONE_KEYS and _E164.fullmatch(value):
                found.add(value)
            elif "@" in value:
                found.update(_emails_in(value))
    return found


def customer_ids(job: Any, account: str) -> set[str]:
    """The customer ids ``job`` holds (an identity call's, a user's external identifiers,
    Yotpo's ``external_id``), in canonical form."""
    if not isinstance(job, dict):
        return set()
    user = job.get("user")
    customer = job.get("customer")
    sources = [
        job if job.get("kind") == "identity" else None,
        user.get("externalIdentifiers") if isinstance(user, dict) else None,
    ]
    found: set[str] = set()
    for source in sources:
        if not isinstance(source, dict):
            continue
        for name in _ID_FIELDS:
            if isinstance(source.get(name), str) and source[name]:
                found.add(customer_id(account, name, source[name]))
        for custom in source.get("customIdentifiers") or ():
            if (
                isinstance(custom, dict)
                and isinstance(custom.get("name"), str)
                and isinstance(custom.get("value"), str)
            ):
                found.add(customer_id(account, f"custom:{custom['name']}", custom["value"]))
    if isinstance(customer, dict) and isinstance(customer.get("external_id"), str) and customer["external_id"]:
        found.add(customer_id(account, "yotpo", customer["external_id"]))
    return found


def parsed(job_json: str) -> Any:
    """A stored job's JSON parsed, or None if it is not JSON (it then holds no identifier)."""
    try:
        return json.loads(job_json)
    except ValueError:
        return None


def identifiers(job_json: str, account: str) -> tuple[set[str], set[str]]:
    """The people (phones, emails) and the customer ids a stored job holds, in canonical form."""
    job = parsed(job_json)
    return people(job), customer_ids(job, account)


def index_of(key: bytes, job: Any, account: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Where a parsed ``job`` of ``account`` is indexed: the keys of the sets its people and
    customer ids name (the job id goes in each), and the links (person's set, ``LINK`` + id)
    that let `erase` follow a person to their ids after the job has ended."""
    person_keys = [person_key(key, p) for p in sorted(people(job))]
    id_keys = [person_key(key, i) for i in sorted(customer_ids(job, account))]
    return person_keys + id_keys, [(p, LINK + i) for p in person_keys for i in id_keys]


def mentions(job_json: str, account: str | None = None) -> set[str]:
    """Every identifier a stored job holds, in canonical form: its people and, given its
    ``account``, its customer ids."""
    found, ids = identifiers(job_json, account or accounts.DEFAULT)
    return found | ids if account is not None else found


def configured_secret(settings: Settings) -> bytes | None:
    """ATTENTIVE_ERASURE_KEY as the keyed hash's key; None: the key is the one kept in Redis."""
    if settings.attentive_erasure_key is None:
        return None
    return settings.attentive_erasure_key.get_secret_value().encode()


def secret(client: redis.Redis, settings: Settings) -> bytes:
    """The keyed hash's key: ATTENTIVE_ERASURE_KEY, or the one kept in Redis (created if absent)."""
    configured = configured_secret(settings)
    if configured is not None:
        return configured
    client.set(keys.ERASURE_KEY, secrets.token_hex(32), nx=True)
    value = client.get(keys.ERASURE_KEY)
    assert value is not None
    return replies.raw(value)


def person_key(key: bytes, identifier: str) -> str:
    """The Redis key of the set of jobs that hold ``identifier`` (in canonical form)."""
    return keys.person(hmac.new(key, identifier.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest())


def identifier(settings: Settings, phone: str | None = None, email: str | None = None) -> str:
    """A phone number or an email in canonical form; `InvalidJob` naming the field."""
    try:
        if phone is not None:
            return normalize_phone(phone, settings.attentive_default_region)
        if email is not None:
            return canonical_email(email)
    except ValueError as exc:
        field = "phone" if phone is not None else "email"
        raise InvalidJob([Problem(field, str(exc))]) from None
    raise InvalidJob([Problem("", "give a phone number or an email")])


@dataclass(frozen=True)
class Erased:
    jobs: int
    """Job records deleted (waiting, queued, scheduled or in flight)."""
    dead_letters: int
    """Dead-letter entries deleted."""
    accounts: tuple[str, ...] = ()
    """The accounts the erased jobs and dead letters were queued under, sorted."""
    fenced_s: float = 0.0
    """How long `erase` waited for attempts in flight to be fenced (0 if none was)."""


def erase(
    client: redis.Redis,
    settings: Settings,
    person: str | None = None,
    ids: Iterable[str] = (),
    fence_wait_s: float = FENCE_WAIT_S,
    before_delete: Callable[[tuple[str, ...], tuple[str, ...]], object] | None = None,
) -> Erased:
    """Delete every job and dead letter that holds ``person`` (see `identifier`) or one of
    ``ids`` (see `customer_id`), and every job that holds a customer id learned from them.
    ``before_delete`` is called with the accounts and the people (phones, emails) of the jobs
    found, before anything is deleted (the deletion requests forwarded to Attentive are
    recorded there, `worker.privacy`). Returns once no
    worker will send one of them (see the module docstring)."""
    key = secret(client, settings)
    seeds = set(ids) | ({person} if person else set())
    pending = {person_key(key, s) for s in seeds}
    sets: set[str] = set()
    found: dict[str, tuple[str, Any]] = {}  # job id -> (account, job)
    for _ in range(MAX_ROUNDS):
        pending -= sets
        if not pending:
            break
        sets |= pending
        members = [replies.text(m) for m in client.sunion(sorted(pending))]
        pending = {m[len(LINK) :] for m in members if m.startswith(LINK)}
        unread = [m for m in members if not m.startswith(LINK) and m not in found]
        for job_id, account, job in _read(client, unread):
            found[job_id] = (account, job)
            pending |= {person_key(key, i) for i in customer_ids(job, account)}
    markers = sorted(
        {
            ordering.marker(key, account, link)
            for account, job in found.values()
            if isinstance(job, dict)
            for link in ordering.links(job)
        }
    )
    found_accounts = tuple(sorted({a for a, _ in found.values()}))
    if before_delete is not None:
        found_people = {p for _, job in found.values() for p in people(job)}
        before_delete(found_accounts, tuple(sorted(found_people | ({person} if person else set()))))
    ids_list = sorted(found)
    jobs, dead, running = _ERASE(
        client,
        keys=[
            keys.STATS,
            keys.QUEUED,
            keys.SCHEDULE,
            keys.LEASES,
            keys.DEAD_INDEX,
            keys.WAITING,
            keys.AWAITED,
            keys.ERASURE_EPOCH,
            *sorted(sets),
        ],
        args=[keys.PREFIX, len(ids_list), *ids_list, *markers],
    )
    waited = 0.0
    if running:
        time.sleep(fence_wait_s)
        waited = fence_wait_s
    return Erased(int(jobs), int(dead), found_accounts, waited)


def _read(client: redis.Redis, ids: list[str]) -> Iterator[tuple[str, str, Any]]:
    """(job id, account, parsed job) of each live record or dead letter among ``ids``."""
    if not ids:
        return
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(keys.job(job_id), "account", "job")
        pipe.get(keys.dead(job_id))
    replies = pipe.execute()
    for job_id, (account, text), dead in zip(ids, replies[::2], replies[1::2], strict=True):
        if text is None and dead is not None:
            entry = _json(dead)
            text = entry.get("job") if isinstance(entry, dict) else None
        job = _json(text) if isinstance(text, str | bytes) else text
        if account is None:
            account = job.get("account") if isinstance(job, dict) else None
        name = account.decode() if isinstance(account, bytes) else account
        yield job_id, str(name or accounts.DEFAULT), job


def _json(raw: str | bytes | None) -> Any:
    try:
        return json.loads(raw) if raw is not None else None
    except ValueError:
        return None
