"""The producer: validate a job, stamp it, and queue it atomically."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from producers.errors import InvalidJob, Problem
from producers.job.validation import job_json, parse_job
from producers.prepared import PreparedJob
from producers.segment import mapping as segment
from producers.segment import yotpo as segment_yotpo
from producers.settings import Settings, load_settings
from producers.store import erasure, keys
from producers.store.enqueue import new_job_id, push_jobs

if TYPE_CHECKING:
    import redis
    from redis.asyncio.client import Pipeline as AsyncPipeline

log = logging.getLogger("attentive_relay.producer")
UNREADABLE = "could not be read: the relay failed on it (logged as a bug); nothing of it was queued"


@contextmanager
def _refusing_failures(what: str) -> Iterator[None]:
    """Turn any failure but `InvalidJob` while reading untrusted input into `InvalidJob`.

    The rules are written so that no input raises anything else (the fuzz tests hold them to
    it); this is the backstop that keeps a bug in them from costing the valid jobs next to the
    one that hit it. The bug is logged by exception type and stack only: exception messages
    may quote the input, which is personal data.
    """
    try:
        yield
    except InvalidJob:
        raise
    except Exception as exc:
        stack = "".join(traceback.format_tb(exc.__traceback__))
        log.error("%s raised %s, refused as invalid; please report:\n%s", what, type(exc).__name__, stack)
        raise InvalidJob([Problem("", UNREADABLE)]) from None


class Producer:
    """Queues jobs for delivery. Thread-safe; one per process is plenty.

    ``client`` is a redis-py client; by default one is built from ``settings.redis_url``
    on first use (no connection is opened before the first enqueue).
    """

    def __init__(self, settings: Settings | None = None, client: redis.Redis | None = None) -> None:
        self.settings = settings or load_settings()
        self._client = client
        self._erasure_key: bytes | None = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            from producers.store.connection import from_settings

            self._client = from_settings(self.settings)
        return self._client

    def prepare(self, job: Any, now: datetime | None = None) -> PreparedJob:
        """Validate and stamp one job, ready to `push`.

        Raises `InvalidJob`, and nothing else whatever ``job`` holds.
        """
        with _refusing_failures("validating a job"):
            model = parse_job(job, self.settings, now or datetime.now(UTC), at_enqueue=True)
            return PreparedJob(new_job_id(), model.kind, job_json(model))

    def enqueue(self, job: Any) -> str:
        """Validate ``job`` (dict, JSON text or model), queue it, and return its job id.

        Raises `InvalidJob` (a ``ValueError``) listing every problem, whatever ``job`` holds;
        nothing is queued then. Raises ``redis.RedisError`` when Redis cannot be reached;
        nothing is queued then either.
        """
        prepared = self.prepare(job)
        self.push([prepared])
        return prepared.job_id

    def push(
        self,
        prepared: list[PreparedJob],
        skipped: Mapping[str, int] | None = None,
        once: Mapping[str, list[str]] | None = None,
    ) -> set[str]:
        """Queue prepared jobs in one transaction, then count skipped Segment messages by reason.

        ``once`` maps `keys.seen` markers (one per Segment messageId) to the ids of that
        message's jobs: a message already queued within the freshness window is left out and
        counted as ``skipped:duplicate``. Returns the markers of the messages left out. Raises
        ``redis.RedisError`` when Redis cannot be reached; no job is queued then.
        """
        if self._erasure_key is None:
            self._erasure_key = erasure.secret(self.client, self.settings)
        duplicates = push_jobs(self.client, self.settings, prepared, self._erasure_key, once)
        if duplicates:
            skipped = {**(skipped or {}), "duplicate": (skipped or {}).get("duplicate", 0) + len(duplicates)}
        if skipped:
            pipe = self.client.pipeline(transaction=False)
            count_skipped(pipe, skipped)
            pipe.execute()
        return duplicates

    def enqueue_segment(self, message: Any, account: str | None = None) -> list[str]:
        """Map one Segment message (track, page, identify) to jobs and queue them together.

        Returns the job ids: none for a message that is skipped (no identifier, or a type with no
        Attentive counterpart; counted under ``skipped:<reason>``), two for an identify that
        makes an identity call and a custom-attributes call. Raises `InvalidJob` naming the field
        when the message cannot make a valid Attentive call; nothing is queued then.
        """
        prepared = self.prepare_segment(message, account)
        if isinstance(prepared, segment.Skip):
            self.push([], {prepared.reason: 1})
            return []
        self.push(prepared)
        return [p.job_id for p in prepared]

    def prepare_segment(self, message: Any, account: str | None = None) -> list[PreparedJob] | segment.Skip:
        """Map and validate one Segment message: every job it makes, or why it is skipped.

        ``account`` names the account its jobs are delivered for (the collector's write key
        picks it); None: the default account. With ATTENTIVE_SEGMENT_TO_YOTPO a track message also
        makes a Yotpo job (`producers.segment.yotpo`). All or nothing: raises `InvalidJob` if any
        of its jobs is invalid (an identify makes two), and nothing else whatever ``message`` holds.
        """
        with _refusing_failures("mapping a Segment message"):
            mapped = segment.to_jobs(
                message,
                rename_keys=self.settings.attentive_segment_rename_keys,
                region=self.settings.attentive_default_region,
            )
            if self.settings.attentive_segment_to_yotpo and not isinstance(mapped, segment.Skip):
                also = segment_yotpo.to_job(
                    message, source=self.settings.yotpo_source, region=self.settings.attentive_default_region
                )
                mapped = mapped if also is None else [*mapped, also]
        if isinstance(mapped, segment.Skip):
            return mapped
        if account is not None:
            mapped = [{**job, "account": account} for job in mapped]
        now = datetime.now(UTC)
        return [self.prepare(job, now) for job in mapped]

    def enqueue_many(self, jobs: Iterable[Any]) -> list[str | InvalidJob]:
        """Queue every valid job in one round trip; invalid ones come back as their `InvalidJob`.

        The result lines up with the input: a job id or the error for each job. No job, however
        malformed, raises or keeps the others from being queued; only ``redis.RedisError``
        (nothing queued) is raised.
        """
        results, ready = self.prepare_many(jobs)
        self.push(ready)
        return results

    def prepare_many(self, jobs: Iterable[Any]) -> tuple[list[str | InvalidJob], list[PreparedJob]]:
        """Validate and stamp every job: (a job id or the `InvalidJob` for each job, in order;
        the valid ones prepared, in order). Raises nothing, whatever ``jobs`` holds."""
        results: list[str | InvalidJob] = []
        ready: list[PreparedJob] = []
        now = datetime.now(UTC)
        for job in jobs:
            try:
                prepared = self.prepare(job, now)
            except InvalidJob as err:
                results.append(err)
                continue
            ready.append(prepared)
            results.append(prepared.job_id)
        return results, ready


def count_skipped(pipe: redis.client.Pipeline | AsyncPipeline, skipped: Mapping[str, int]) -> None:
    """Add to ``pipe`` the ``skipped:<reason>`` counts of Segment messages queued as no job."""
    for reason, count in skipped.items():
        pipe.hincrby(keys.STATS, f"skipped:{reason}", count)
