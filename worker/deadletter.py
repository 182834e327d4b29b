"""The dead-letter store: jobs that will not be delivered without a person, and their story.

Each entry is a JSON string at `producers.store.keys.dead` holding the job id, the full job, the
reason, Attentive's last status and response body (truncated), every attempt, and first/last
seen times. `producers.store.keys.DEAD_INDEX` orders them by when they died. Entries expire after
``ATTENTIVE_DLQ_RETENTION_DAYS`` because they hold personal data; the index drops
expired ids lazily.

**Filters.** One `Filter` (built and checked by `Filter.parse`) selects entries for ``dlq
list``, ``count``, ``replay`` and ``purge`` alike: when they died (``since``/``until``, read
from the index's scores), reason, the last attempt's HTTP status (``429`` or a class, ``5xx``),
job kind, account, destination, and a person. A person is found through the keyed erasure
index (`producers.store.erasure.person_key`): the set of job ids that mention the phone or email,
intersected with the dead-letter ids. Neither the value nor its hash is ever stored by a filter.

**Replay** puts a job back on its account's queue with a fresh attempt count and a new ticket, in
one transaction with removing the entry (WATCHed, so two operators replaying at once queue it
once), and with adding its id to `producers.store.keys.REPLAYING`. So a replay stopped at any point
(Ctrl-C, a lost connection, ``--limit``) is resumed by running it again: what was queued has
left the dead-letter store, and nothing is sent twice. The workers send replayed jobs like any
others: same lanes, same global rate limiter, same checks (a stale event stays refused).

**Pacing.** A bulk replay never floods: it queues a lane's jobs (a lane is one credential at one
endpoint, the rate limiter's bucket) only while fewer than that lane's *window* of replayed jobs
are queued, running or due within `SOON_S` (counted from `producers.store.keys.REPLAYING`, so
concurrent and resumed replays share it), and only while no fresh job of the account has waited
queued longer than `FRESH_WAIT_S`. The window is `WINDOW_S` of the lane's rate (150/s: 36 jobs).
A fresh job queued meanwhile therefore finds at most a window of replayed jobs ahead of it, which
the lane clears in `WINDOW_S`: it reaches the API within its latency plus well under a second,
and the replay takes only the capacity fresh work leaves. It works in chunks of `CHUNK` entries
with a progress line each, and stops (resumable) when nothing moved for ``stall_s``: workers not
running, or fresh work never leaving room.

**Stale events.** An event (`producers.job.freshness.EVENT_KINDS`) that would be older than the
freshness window by the time it is sent (judged when its chunk comes, with `STALE_MARGIN_S` to
spare) is reported and kept, not replayed: Attentive would accept it and ignore it. With
``include_stale`` it is replayed anyway and listed in `Replay.included_stale`; a worker still
refuses one already past the window when its turn comes (dead-lettered as ``stale`` again).

Replay never puts a job on a queue nobody consumes: an entry whose account is not in the
settings (``ATTENTIVE_ACCOUNTS``) is refused and kept, unless the operator names a target
account, which the job is then replayed as (its JSON and record name it).
"""

from __future__ import annotations

import builtins
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import redis

from producers import accounts
from producers.errors import REASONS, InvalidJob
from producers.job import freshness
from producers.job.validation import KINDS
from producers.settings import Settings
from producers.store import erasure, keys, replies
from producers.store.enqueue import add_job, job_record
from worker.jobstore import UNKNOWN_ACCOUNT, job_with_account

CHUNK = 100
"""Entries a replay takes at a time (one progress line each)."""
WINDOW_S = 0.25
"""A lane's replay window: this many seconds of its rate (times the limiter's headroom)."""
FRESH_WAIT_S = 0.25
"""A fresh job queued longer than this means its account has a backlog: replay waits."""
SOON_S = 5.0
"""A replayed job scheduled (parked or retrying) due within this long still counts in its window."""
STALL_S = 60.0
"""A replay stops (resumable) after this long without queuing anything."""
POLL_S = 0.05
"""How often a waiting replay looks at its windows again."""
STALE_MARGIN_S = 60.0
"""An event that goes stale within this long of its chunk's turn counts as stale: its replayed
job might wait, be parked or retried before it is sent."""
PAGE = 1000
"""Entries read per Redis round trip when selecting."""
DESTINATIONS = ("attentive_rest", "attentive_graphql", "yotpo")
"""What ``--destination`` takes (`worker.destinations`' names), and ``attentive`` for both of Attentive's."""
ALL_REASONS = (*REASONS, UNKNOWN_ACCOUNT)
_AGE = re.compile(r"([0-9]{1,9})([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_STATUS = re.compile(r"[1-5]([0-9][0-9]|xx)")


def _texts(reply: object) -> list[str]:
    """The members of a set or sorted-set reply (without scores) as text."""
    return [replies.text(m) for m in cast("Iterable[bytes | str]", reply)]


def _field_of(entry: dict[str, Any], name: str) -> str:
    """A string field of a dead-lettered job (stored parsed, or as text); '' if it has none."""
    job = entry.get("job")
    if isinstance(job, str):
        try:
            job = json.loads(job)
        except ValueError:
            job = None
    value = job.get(name) if isinstance(job, dict) else None
    return value if isinstance(value, str) else ""


def account_of_entry(entry: dict[str, Any]) -> str:
    """The account of a dead-lettered job: its ``account`` field, `producers.accounts.DEFAULT` if none."""
    return _field_of(entry, "account") or accounts.DEFAULT


class FilterError(ValueError):
    """A filter option's value breaks its rule; the message names both, never the value."""

    def __init__(self, option: str, rule: str) -> None:
        super().__init__(f"{option}: {rule}")
        self.option = option
        self.rule = rule


def parse_time(option: str, text: str, now: datetime) -> int:
    """``text`` as epoch ms: an ISO 8601 time (UTC if it names no zone) or an age (``30m``,
    ``2h``, ``7d``: that long before ``now``)."""
    text = text.strip()
    age = _AGE.fullmatch(text)
    if age:
        return int((now - timedelta(seconds=int(age[1]) * _UNIT_S[age[2]])).timestamp() * 1000)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise FilterError(
            option, "must be an ISO 8601 time (2025-01-31T09:00:00Z) or an age: a number and s, m, h, d or w (2h)"
        ) from None
    return int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() * 1000)


@dataclass(frozen=True)
class Filter:
    """Which dead letters a command works on; every field set must match. Built by `parse`."""

    since_ms: int | None = None
    until_ms: int | None = None
    reason: str | None = None
    status: str | None = None
    """``429``, or a class: ``5xx``."""
    kind: str | None = None
    account: str | None = None
    destination: str | None = None
    person_set: str | None = None
    """The Redis key of the person's set in the erasure index (a keyed hash), never the value."""

    @classmethod
    def parse(
        cls,
        client: redis.Redis,
        settings: Settings,
        *,
        since: str | None = None,
        until: str | None = None,
        reason: str | None = None,
        status: str | None = None,
        kind: str | None = None,
        account: str | None = None,
        destination: str | None = None,
        person: str | None = None,
        now: datetime | None = None,
    ) -> Filter:
        """The filter the options describe; `FilterError` naming the first bad option and its rule."""
        now = now or datetime.now(UTC)
        since_ms = parse_time("--since", since, now) if since is not None else None
        until_ms = parse_time("--until", until, now) if until is not None else None
        if since_ms is not None and until_ms is not None and since_ms > until_ms:
            raise FilterError("--since", "must be earlier than --until")
        if reason is not None and reason not in ALL_REASONS:
            raise FilterError("--reason", "must be one of " + ", ".join(ALL_REASONS))
        if status is not None:
            status = status.strip().lower()
            if not _STATUS.fullmatch(status):
                raise FilterError("--status", "must be an HTTP status (100-599, such as 429) or a class such as 5xx")
        if kind is not None and kind not in KINDS:
            raise FilterError("--kind", "must be one of " + ", ".join(KINDS))
        if account is not None and not accounts.NAME.match(account):
            raise FilterError("--account", "must be an account name: 1-63 letters, digits, '-' or '_'")
        if destination is not None and destination not in (*DESTINATIONS, "attentive"):
            raise FilterError("--destination", "must be one of attentive, " + ", ".join(DESTINATIONS))
        person_set = None
        if person is not None:
            person = person.strip()
            try:
                found = erasure.identifier(settings, **({"email": person} if "@" in person else {"phone": person}))
            except InvalidJob as exc:
                rules = "; ".join(p.rule for p in exc.problems)
                raise FilterError("--person", f"must be a phone number or an email ({rules})") from None
            person_set = erasure.person_key(erasure.secret(client, settings), found)
        return cls(since_ms, until_ms, reason, status, kind, account, destination, person_set)

    @property
    def narrows(self) -> bool:
        """Whether any field is set."""
        return any(v is not None for v in vars(self).values())

    def matches(self, entry: dict[str, Any], destination_of: Callable[[str], str]) -> bool:
        """Whether ``entry`` passes the fields read from the entry itself (not time or person)."""
        if self.reason is not None and entry.get("reason") != self.reason:
            return False
        if self.status is not None:
            got = entry.get("status")
            if not isinstance(got, int) or not (
                str(got) == self.status or (self.status.endswith("xx") and str(got)[0] == self.status[0])
            ):
                return False
        if self.account is not None and account_of_entry(entry) != self.account:
            return False
        kind = _field_of(entry, "kind")
        if self.kind is not None and kind != self.kind:
            return False
        if self.destination is not None:
            name = destination_of(kind)
            if name != self.destination and not (self.destination == "attentive" and name.startswith("attentive")):
                return False
        return True


@dataclass(frozen=True)
class Lane:
    """Where a replayed job is sent: its rate-limit bucket (``key``), queue and replay window."""

    key: str
    queue: str
    window: int


class _Routes:
    """Each job kind's destination and lane, as the workers pick them (`worker.destinations`)."""

    def __init__(self, settings: Settings) -> None:
        from worker.destinations import Destinations

        self.settings = settings
        self._destinations: Any = None
        self._factory = Destinations
        self._lanes: dict[tuple[str, str], Lane | None] = {}

    def _for(self, kind: str) -> tuple[Any, Any]:
        if self._destinations is None:
            self._destinations = self._factory(self.settings)
        job = SimpleNamespace(kind=kind)
        return self._destinations.for_job(job), job

    def destination(self, kind: str) -> str:
        return str(self._for(kind)[0].name)

    def lane(self, account: str | None, kind: str) -> Lane | None:
        """``account``'s lane for ``kind``; None for an account not in the settings."""
        if (account or "", kind) not in self._lanes:
            found = self.settings.accounts.get(account) if account else None
            lane = None
            if found is not None:
                destination, job = self._for(kind)
                bucket = destination.bucket(job, found)
                window = max(1, int(bucket.rate * self.settings.attentive_rate_headroom * WINDOW_S))
                lane = Lane(f"{bucket.tag}:{bucket.lane}", self.settings.queue_for(account), window)
            self._lanes[(account or "", kind)] = lane
        return self._lanes[(account or "", kind)]

    def close(self) -> None:
        if self._destinations is not None:
            self._destinations.close()
            self._destinations = None


class DeadLetters:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.routes = _Routes(settings)

    def filter(self, **options: Any) -> Filter:
        """`Filter.parse` with this store's Redis and settings."""
        return Filter.parse(self.client, self.settings, **options)

    def select(self, flt: Filter | None = None, ids: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
        """Entries that pass ``flt``, newest first (or, given ``ids``, in their order), read a page
        at a time so a large store is never held in memory."""
        flt = flt or Filter()
        if ids is None:
            low = "-inf" if flt.since_ms is None else flt.since_ms
            high = "+inf" if flt.until_ms is None else flt.until_ms
            chosen = _texts(self.client.zrevrangebyscore(keys.DEAD_INDEX, high, low))
        else:
            chosen = list(dict.fromkeys(ids))
            if flt.since_ms is not None or flt.until_ms is not None:
                pipe = self.client.pipeline(transaction=False)
                for job_id in chosen:
                    pipe.zscore(keys.DEAD_INDEX, job_id)
                scores = pipe.execute()
                chosen = [
                    i
                    for i, at in zip(chosen, scores, strict=True)
                    if at is not None
                    and (flt.since_ms is None or at >= flt.since_ms)
                    and (flt.until_ms is None or at <= flt.until_ms)
                ]
        if flt.person_set is not None:
            theirs = set(_texts(self.client.smembers(flt.person_set)))
            chosen = [i for i in chosen if i in theirs]
        for start in range(0, len(chosen), PAGE):
            for entry in self.entries(chosen[start : start + PAGE]):
                if flt.matches(entry, self.routes.destination):
                    yield entry

    def ids(
        self, reason: str | None = None, limit: int | None = None, account: str | None = None, flt: Filter | None = None
    ) -> list[str]:
        """Newest first; with ``reason`` and/or ``account`` (or a whole `Filter`), only those entries."""
        if (flt is None or not flt.narrows) and reason is None and account is None:
            # From the index alone: ``dlq replay --all`` always passes a Filter, and reading
            # and parsing every entry only to pass them all grows with the store (100,000).
            ids = _texts(self.client.zrevrange(keys.DEAD_INDEX, 0, -1))
            return ids[:limit] if limit else ids
        flt = flt or Filter(reason=reason, account=account)
        return [e["job_id"] for e in self._limited(self.select(flt), limit)]

    def choose(self, flt: Filter, ids: list[str]) -> list[str]:
        """Of the given ``ids``, those that pass ``flt`` and those not found at all (so a replay
        reports them missing), in their order."""
        if not flt.narrows:
            return ids
        passing = {e["job_id"] for e in self.select(flt, ids)}
        found = {e["job_id"] for e in self.entries(ids)}
        return [i for i in ids if i in passing or i not in found]

    def count(self, flt: Filter | None = None) -> dict[str, Any]:
        """How many entries pass ``flt``, in all and by reason."""
        by_reason = Counter(e["reason"] for e in self.select(flt))
        return {"count": sum(by_reason.values()), "by_reason": dict(sorted(by_reason.items()))}

    def entries(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        """Entries for ``ids`` that still exist; expired ones are dropped from the index."""
        ids = list(ids)
        if not ids:
            return []
        raws = self.client.mget([keys.dead(i) for i in ids])
        expired = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
        if expired:
            self.client.zrem(keys.DEAD_INDEX, *expired)
        return [json.loads(raw) for raw in raws if raw is not None]

    def list(
        self,
        reason: str | None = None,
        limit: int | None = None,
        account: str | None = None,
        ids: Iterable[str] | None = None,
        flt: Filter | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """Entries newest first; with ``reason``, only those; with ``account``, only the jobs of
        that account (a job naming none is the default account's); with ``flt``, those it passes."""
        flt = flt or Filter(reason=reason, account=account)
        return self._limited(self.select(flt, ids), limit)

    @staticmethod
    def _limited(entries: Iterator[dict[str, Any]], limit: int | None) -> builtins.list[dict[str, Any]]:
        out: builtins.list[dict[str, Any]] = []
        for entry in entries:
            if limit is not None and len(out) >= limit:
                break
            out.append(entry)
        return out

    def show(self, job_id: str) -> dict[str, Any] | None:
        found = self.entries([job_id])
        return found[0] if found else None

    def replay(
        self, ids: Iterable[str], to_account: str | None = None, **options: Any
    ) -> dict[str, builtins.list[str]]:
        """Queue these jobs again, each on its account's queue, paced (see the module docstring
        and `Replay` for ``options``). Returns lists of job ids: ``{"replayed", "stale",
        "missing", "unserved"}``, and ``unserved_accounts``, the names of the accounts of the
        ``unserved`` entries.

        An entry whose account is not in the settings is ``unserved`` and kept, or with
        ``to_account`` replayed as a job of that account (entries of configured accounts keep
        theirs). Raises ``ValueError`` naming ``to_account`` if it is not in the settings.
        """
        return Replay(self, to_account, **options).run(ids)

    def purge(self, ids: Iterable[str]) -> int:
        """Delete these entries for good. Returns how many existed."""
        ids = list(ids)
        deleted = 0
        for start in range(0, len(ids), PAGE):
            part = ids[start : start + PAGE]
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(*[keys.dead(i) for i in part])
            pipe.zrem(keys.DEAD_INDEX, *part)
            deleted += int(pipe.execute()[0])
        return deleted


class Replay:
    """One paced, resumable replay (see the module docstring). ``progress`` gets a line per chunk
    and one when the replay waits long; ``included_stale`` lists the stale events replayed
    anyway; ``stopped`` says why a replay ended before its last entry (None if it did not)."""

    def __init__(
        self,
        store: DeadLetters,
        to_account: str | None = None,
        include_stale: bool = False,
        progress: Callable[[str], None] | None = None,
        chunk: int = CHUNK,
        stall_s: float = STALL_S,
    ) -> None:
        if to_account is not None and to_account not in store.settings.accounts:
            raise ValueError(f"account {to_account} is not in ATTENTIVE_ACCOUNTS")
        self.store = store
        self.client = store.client
        self.settings = store.settings
        self.to_account = to_account
        self.include_stale = include_stale
        self.progress = progress or (lambda _: None)
        self.chunk = max(1, chunk)
        self.stall_s = stall_s
        self.included_stale: list[str] = []
        self.stopped: str | None = None
        self._erasure_key = erasure.secret(self.client, self.settings)

    def run(self, ids: Iterable[str]) -> dict[str, list[str]]:
        ids = list(ids)
        out: dict[str, list[str]] = {"replayed": [], "stale": [], "missing": [], "unserved": []}
        gone: set[str] = set()
        for start in range(0, len(ids), self.chunk):
            part = ids[start : start + self.chunk]
            lanes = self._lanes_of(part)
            pending, moved_at, told_at = part, time.monotonic(), time.monotonic()
            while pending:
                live, busy = self._load()
                held = []
                for job_id in pending:
                    lane = lanes.get(job_id)
                    if lane is not None and (live[lane.key] >= lane.window or lane.queue in busy):
                        held.append(job_id)
                        continue
                    outcome = self._one(job_id)
                    if outcome.startswith("unserved:"):
                        gone.add(outcome.partition(":")[2])
                        outcome = "unserved"
                    if outcome == "replayed" and lane is not None:
                        live[lane.key] += 1
                    out[outcome].append(job_id)
                now = time.monotonic()
                if len(held) < len(pending):
                    moved_at = now
                pending = held
                if not pending:
                    break
                if now - moved_at >= self.stall_s:
                    self.stopped = (
                        f"nothing could be queued for {self.stall_s:g} s: workers are not taking the replayed "
                        "jobs, or fresh jobs keep the queue busy; run the same command again to resume"
                    )
                    break
                if now - told_at >= 10:
                    told_at = now
                    self.progress(f"replay: waiting for room: {len(pending)} entries of this chunk held back")
                time.sleep(POLL_S)
            done = min(start + self.chunk, len(ids))
            self.progress(
                f"replay: {done} of {len(ids)} entries done: replayed {len(out['replayed'])}, "
                f"stale {len(out['stale'])}, not found {len(out['missing'])}, refused {len(out['unserved'])}"
            )
            if self.stopped:
                break
        self.store.routes.close()
        return {**out, "unserved_accounts": sorted(gone)}

    def _target(self, entry: dict[str, Any]) -> str | None:
        account = account_of_entry(entry)
        return account if account in self.settings.accounts else self.to_account

    def _lanes_of(self, ids: list[str]) -> dict[str, Lane | None]:
        return {
            e["job_id"]: self.store.routes.lane(self._target(e), _field_of(e, "kind"))
            for e in self.store.entries(ids)
            if isinstance(e, dict) and "job_id" in e
        }

    def _load(self) -> tuple[Counter[str], set[str]]:
        """Replayed jobs in each lane's window now, and the queues with a fresh backlog."""
        now_ms = int(time.time() * 1000)
        self.client.zremrangebyscore(keys.REPLAYING, "-inf", now_ms - self.settings.job_retention_ms)
        members = _texts(self.client.zrange(keys.REPLAYING, 0, -1))
        overdue = _texts(
            self.client.zrangebyscore(keys.QUEUED, "-inf", now_ms - int(FRESH_WAIT_S * 1000), start=0, num=PAGE)
        )
        pipe = self.client.pipeline(transaction=False)
        for job_id in members:
            pipe.hmget(keys.job(job_id), "state", "account", "kind")
            pipe.zscore(keys.SCHEDULE, job_id)
        for job_id in overdue:
            pipe.hget(keys.job(job_id), "account")
            pipe.zscore(keys.REPLAYING, job_id)
        replies = pipe.execute()
        live: Counter[str] = Counter()
        done = []
        head, rest = replies[: 2 * len(members)], replies[2 * len(members) :]
        for job_id, (state, account, kind), due in zip(members, head[0::2], head[1::2], strict=True):
            soon = state == b"scheduled" and due is not None and due <= now_ms + SOON_S * 1000
            if state in (b"queued", b"running") or soon:
                lane = self.store.routes.lane((account or b"").decode() or None, (kind or b"").decode())
                if lane is not None:
                    live[lane.key] += 1
            else:
                done.append(job_id)  # ended, or retrying later as any job does
        if done:
            self.client.zrem(keys.REPLAYING, *done)
        busy = {
            self.settings.queue_for((account or b"").decode() or accounts.DEFAULT)
            for account, replayed in zip(rest[0::2], rest[1::2], strict=True)
            if replayed is None
        }
        return live, busy

    def _one(self, job_id: str) -> str:
        key = keys.dead(job_id)
        now = datetime.now(UTC)
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                raw = pipe.get(key)
                if raw is None:
                    return "missing"
                entry = json.loads(raw)
                text = entry["job"] if isinstance(entry["job"], str) else json.dumps(entry["job"])
                try:
                    job = json.loads(text)
                except ValueError:
                    job = {}
                job = job if isinstance(job, dict) else {}
                if self._stale(job, now):
                    if not self.include_stale:
                        return "stale"
                    self.included_stale.append(job_id)
                account = account_of_entry(entry)
                replayed: dict[str, Any] = {"at": now.isoformat(), "replayed": True}
                if account not in self.settings.accounts:
                    # Its queue has no consumer: only where the operator says.
                    if self.to_account is None:
                        return f"unserved:{account}"
                    account, text = self.to_account, job_with_account(text, self.to_account)
                    replayed["account"] = self.to_account
                now_ms = int(time.time() * 1000)
                record = job_record(text, str(job.get("kind", "")), now_ms, round_=int(entry.get("round", 0)) + 1)
                # the entry's job may be re-serialized (spaces after ':'), which account_of does not read
                record["account"] = account
                record["history"] = json.dumps([*entry.get("attempts", []), replayed])
                pipe.multi()
                pipe.delete(key)
                pipe.zrem(keys.DEAD_INDEX, job_id)
                add_job(pipe, self.settings, job_id, record, now_ms, self._erasure_key)
                pipe.zadd(keys.REPLAYING, {job_id: now_ms})
                pipe.pexpire(keys.REPLAYING, self.settings.job_retention_ms)
                pipe.hincrby(keys.STATS, "replayed", 1)
                pipe.execute()
            except redis.WatchError:
                if job_id in self.included_stale:
                    self.included_stale.remove(job_id)
                return "missing"  # someone else replayed or purged it just now
        return "replayed"

    def _stale(self, job: dict[str, Any], now: datetime) -> bool:
        """Whether ``job`` is an event that would be past the freshness window by the time it is sent."""
        occurred = job.get("occurredAt")
        if job.get("kind") not in freshness.EVENT_KINDS or not isinstance(occurred, str) or not occurred:
            return False
        try:
            at = datetime.fromisoformat(occurred.replace("Z", "+00:00"))
        except ValueError:
            return False  # the worker's validation says what is wrong with it
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        return freshness.is_stale(at, now + timedelta(seconds=STALE_MARGIN_S), self.settings.freshness_s)
