"""The dead-letter store: jobs that will not be delivered without a person, and their story.

Each entry is a JSON string at `producers.keys.dead` holding the job id, the full job, the
reason, Attentive's last status and response body (truncated), every attempt, and first/last
seen times. `producers.keys.DEAD_INDEX` orders them by when they died. Entries expire after
``ATTENTIVE_DLQ_RETENTION_DAYS`` because they hold personal data; the index drops
expired ids lazily.

``list`` and ``ids`` filter by reason and by account (the job's ``account`` field).
Replay puts a job back on its account's queue with a fresh attempt count and a new ticket, in one
transaction with removing the entry (WATCHed, so two operators replaying at once queue it
once). The worker validates it again: a stale event stays refused unless it is fresh again.
Replay never puts a job on a queue nobody consumes: an entry whose account is not in the
settings (``ATTENTIVE_ACCOUNTS``) is refused and kept, unless the operator names a target
account, which the job is then replayed as (its JSON and record name it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import redis

from producers import accounts, erasure, freshness, keys
from producers.queue import add_job, job_record
from producers.settings import Settings
from worker.jobstore import job_with_account


def account_of_entry(entry: dict[str, Any]) -> str:
    """The account of a dead-lettered job: its ``account`` field, `producers.accounts.DEFAULT` if none."""
    job = entry.get("job")
    if isinstance(job, str):
        try:
            job = json.loads(job)
        except ValueError:
            job = None
    account = job.get("account") if isinstance(job, dict) else None
    return account if isinstance(account, str) and account else accounts.DEFAULT


class DeadLetters:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    def ids(self, reason: str | None = None, limit: int | None = None, account: str | None = None) -> list[str]:
        """Newest first; with ``reason`` and/or ``account``, only those entries."""
        ids = [i.decode() for i in self.client.zrevrange(keys.DEAD_INDEX, 0, -1)]
        if reason is None and account is None:
            return ids[:limit] if limit else ids
        return [e["job_id"] for e in self.list(reason, limit, account, ids)]

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
    ) -> list[dict[str, Any]]:
        """Entries newest first; with ``reason``, only those; with ``account``, only the jobs of
        that account (a job naming none is the default account's)."""
        return [
            e
            for e in self.entries(self.ids() if ids is None else ids)
            if (reason is None or e["reason"] == reason) and (account is None or account_of_entry(e) == account)
        ][:limit]

    def show(self, job_id: str) -> dict[str, Any] | None:
        found = self.entries([job_id])
        return found[0] if found else None

    def replay(self, ids: Iterable[str], to_account: str | None = None) -> dict[str, list[str]]:
        """Queue these jobs again, each on its account's queue. Returns lists of job ids:
        ``{"replayed", "stale", "missing", "unserved"}``, and ``unserved_accounts``, the names
        of the accounts of the ``unserved`` entries.

        An entry whose account is not in the settings is ``unserved`` and kept, or with
        ``to_account`` replayed as a job of that account (entries of configured accounts keep
        theirs). Raises ``ValueError`` naming ``to_account`` if it is not in the settings.
        """
        if to_account is not None and to_account not in self.settings.accounts:
            raise ValueError(f"account {to_account} is not in ATTENTIVE_ACCOUNTS")
        out: dict[str, list[str]] = {"replayed": [], "stale": [], "missing": [], "unserved": []}
        gone: set[str] = set()
        now = datetime.now(UTC)
        erasure_key = erasure.secret(self.client, self.settings)
        for job_id in ids:
            outcome = self._replay_one(job_id, now, erasure_key, to_account)
            if outcome.startswith("unserved:"):
                gone.add(outcome.partition(":")[2])
                outcome = "unserved"
            out[outcome].append(job_id)
        out["unserved_accounts"] = sorted(gone)
        return out

    def _replay_one(self, job_id: str, now: datetime, erasure_key: bytes, to_account: str | None) -> str:
        key = keys.dead(job_id)
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
                occurred = job.get("occurredAt")
                if (
                    job.get("kind") in freshness.EVENT_KINDS
                    and occurred
                    and freshness.is_stale(
                        datetime.fromisoformat(occurred.replace("Z", "+00:00")), now, self.settings.freshness_s
                    )
                ):
                    return "stale"
                account = account_of_entry(entry)
                replayed: dict[str, Any] = {"at": now.isoformat(), "replayed": True}
                if account not in self.settings.accounts:
                    # Its queue has no consumer: only where the operator says.
                    if to_account is None:
                        return f"unserved:{account}"
                    account, text = to_account, job_with_account(text, to_account)
                    replayed["account"] = to_account
                now_ms = int(time.time() * 1000)
                record = job_record(text, str(job.get("kind", "")), now_ms, round_=int(entry.get("round", 0)) + 1)
                # the entry's job may be re-serialized (spaces after ':'), which account_of does not read
                record["account"] = account
                record["history"] = json.dumps([*entry.get("attempts", []), replayed])
                pipe.multi()
                pipe.delete(key)
                pipe.zrem(keys.DEAD_INDEX, job_id)
                add_job(pipe, self.settings, job_id, record, now_ms, erasure_key)
                pipe.hincrby(keys.STATS, "replayed", 1)
                pipe.execute()
            except redis.WatchError:
                return "missing"  # someone else replayed or purged it just now
        return "replayed"

    def purge(self, ids: Iterable[str]) -> int:
        """Delete these entries for good. Returns how many existed."""
        ids = list(ids)
        if not ids:
            return 0
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(*[keys.dead(i) for i in ids])
        pipe.zrem(keys.DEAD_INDEX, *ids)
        deleted, _ = pipe.execute()
        return int(deleted)
