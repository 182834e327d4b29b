"""One delivery attempt from claim to outcome.

In the Celery task (`Delivery.start`): claim (fencing; one script for a batch message) -> a
lost previous attempt -> validate again -> freshness -> admission to the job's lane (or
parked until its turn). Then a group per lane and message, on a lane's thread
(`worker.lanes`): the group's rate-limit slots, reserved only when near; on a request thread
per job: the lease fence right before the request leaves (`worker.lease`) -> send -> retry
policy; and the group's decisions recorded in one pipeline.

Any exception in a job's steps is a poison job: it is dead-lettered as ``crashed`` with a
traceback summary (exception type and code locations, never values), so it cannot loop,
and the other jobs of its message go on. A Redis error is not the job's fault: in the claim
it propagates (the task hands the message back); later, the job's lease brings it back.

`Delivery.run` and `Delivery.run_batch` do the same and wait for the outcomes (tests and
in-process use); the Celery tasks call `Delivery.start` and return at once.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import redis
from pydantic import BaseModel

from producers.accounts import Account
from producers.errors import InvalidJob, NetworkError, RateLimited, ServerError, Stale, Uncertain, WorkerLost
from producers.job import freshness
from producers.job.validation import parse_job
from producers.settings import Settings
from producers.store import keys, lua
from producers.store.message import MAX_BATCH, job_of
from worker.circuit import Circuits
from worker.destinations import Bucket, Destination, Destinations, Outcome, account_of
from worker.destinations.transport import LEAVE_BY, LateToLeave
from worker.ended import DEFERRED, Ended, dead, skipped
from worker.jobstore import Claim, JobStore
from worker.lanes import Lanes
from worker.lease import Leases
from worker.ops import sentry
from worker.pause import RECHECK_S, Pauses
from worker.pause import lane as lane_of
from worker.policy import DeadLetter, Decision, Delivered, Pause, Retry, RetryPolicy, decide
from worker.ratelimit import RateLimiter

T = TypeVar("T")
log = logging.getLogger("attentive_relay.delivery")
MAX_RESPONSE_KEPT = 2000
#: How far off a send slot may be for a lane to reserve it and wait; further off, the lane
#: reserves nothing and comes back nearer the slot (see `worker.ratelimit`).
SLOT_WAIT_S = 1.0
#: Jobs a process sends at once (its request threads), shared fairly by the lanes
#: (`worker.lanes`): one lane alone may use half, so another lane always finds room.
SENDER_THREADS = 8 * MAX_BATCH
#: Tries to reserve slots before a lane gives the rest of a group back to the schedule.
MAX_SLOT_TRIES = 100
#: How late a send may still use its slot; later, it would bunch up with the next slots' sends
#: past Attentive's count for a second (at 10/s, one late send is one too many), so it takes a
#: new one.
LATE_SLOT_S = 0.025
#: Slots a send may take, one after another, when each time it is too late for it.
LATE_TRIES = 3
#: A bucket whose next free slot is this far ahead is crowded: late sends there bunch up.
CROWDED_S = 0.01
#: How much longer than a request's deadline its lease must last for it to leave without a renewal.
FENCE_MARGIN_S = 5.0
#: Pause for the whole bucket when Attentive reports x-ratelimit-remaining: 0 without a 429.
EXHAUSTED_SECOND_PAUSE_S = 0.1


def _iso(ms: int) -> str:
    # Always with milliseconds, so the strings sort in time order (isoformat drops a zero fraction).
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def traceback_summary(exc: BaseException) -> str:
    """Exception type and where it was raised, without its message or locals (they may hold data)."""
    frames = traceback.extract_tb(exc.__traceback__)[-6:]
    where = " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} in {f.name}" for f in reversed(frames))
    return f"{type(exc).__module__}.{type(exc).__qualname__} at {where}"


class Delivery:
    """Runs attempts. One per worker process; ``clock``, ``rand`` and ``sleep`` are
    injectable for tests."""

    def __init__(
        self,
        settings: Settings,
        destinations: Destinations,
        store: JobStore,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.destinations = destinations
        self.store = store
        self.limiter = limiter
        self.policy = RetryPolicy.from_settings(settings)
        self.clock = clock
        self.rand = rand
        self.sleep = sleep
        self.leases = Leases(store.client, store.lease_ms)
        self.pauses = Pauses(store.client)
        self.circuits = Circuits(store.client, settings)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        #: A send needs its lease for its deadline and a margin for clocks that differ between
        #: workers (the lease is scored in this worker's time, the takeover in another's).
        self._fence_need_ms = int((settings.attentive_timeout_s + FENCE_MARGIN_S) * 1000)
        # An attempt admitted to a lane starts within this long at the lane's pace: its claim's
        # lease covers it twice over, and the request's own deadline after that.
        self.lanes = Lanes(
            SENDER_THREADS, (settings.attentive_lease_s - settings.attentive_timeout_s) / 2, "attentive-lane"
        )
        self.task_slots = 1
        """Tasks this process runs at once (the threads pool's concurrency; 1 in a prefork
        child): up to three quarters of them may wait for room in a full lane."""
        self._blocked = 0
        self._blocking_lock = threading.Lock()

    def run(self, job_id: str, ticket: str) -> str:
        """Attempt the job if this message holds its ticket, and wait for the outcome's name
        (`worker.ended`)."""
        [started] = self.start([(job_id, ticket)])
        return str(started if isinstance(started, Ended) else started.result())

    def run_batch(self, batch_id: str, tickets: list[str]) -> Counter[str]:
        """Attempt every job of one batch message whose ticket it holds, and wait for them all.
        Returns how many ended each way."""
        pairs = [(job_of(ticket), ticket) for ticket in tickets[:MAX_BATCH]]
        counts: Counter[str] = Counter()
        for started in self.start(pairs, batch_id):
            counts[(started if isinstance(started, Ended) else started.result()).counted] += 1
        return counts

    def start(self, pairs: list[tuple[str, str]], batch_id: str | None = None) -> list[Ended | Pending]:
        """Claim the jobs of one message (``batch_id`` for a batch message, else one job), check
        each again and hand them, a group per lane, to the lanes' threads. Returns, per job,
        the outcome already reached (skipped, refused, stale, parked) or its `Pending` send.

        Nothing waits here for a send: a slow API holds no task slot, and every account's
        messages keep being taken. Only a full lane makes the task wait for room, and only
        while a quarter of the task slots stay free (`_admit`); what a lane still cannot start
        within its budget is parked in the schedule until its turn (`worker.lanes`): a process
        holds only what it can send in time, and leaves the rest of a backlog to others.

        A failure in one job's steps dead-letters that job as ``crashed`` and leaves the
        others alone. A Redis error in the claim is raised (the task hands the message back);
        after the claim, a job whose steps cannot reach Redis comes back when its lease ends.
        """
        now_ms = int(self.clock() * 1000)
        if batch_id is None:
            claims = [self.store.claim(pairs[0][0], pairs[0][1], now_ms)]
        else:
            claims = self.store.claim_many(batch_id, pairs, now_ms)
        out: list[Ended | Pending] = []
        by_lane: dict[str, list[tuple[int, Ready]]] = {}
        for (job_id, ticket), claim in zip(pairs, claims, strict=True):
            if isinstance(claim, str):
                out.append(_skipped(job_id, ticket, claim))
                continue
            self.leases.hold(claim.job_id, claim.ticket, now_ms + self.store.lease_ms)
            prepared = self._in_lane(claim, now_ms, partial(self._prepare, claim, now_ms))
            if isinstance(prepared, Ready):
                prepared = self._in_lane(claim, now_ms, partial(self._held_back, prepared, now_ms))
            out.append(prepared if isinstance(prepared, Ended) else DEFERRED)  # a placeholder until handed on
            if isinstance(prepared, Ready):
                by_lane.setdefault(RateLimiter.key(prepared.bucket), []).append((len(out) - 1, prepared))
        for lane, members in by_lane.items():
            admitted = self._admit(lane, len(members))
            size = max(1, self.lanes.share())
            for first in range(0, admitted, size):
                group = members[first : min(admitted, first + size)]
                readies = [ready for _, ready in group]
                sent = self.lanes.submit(lane, partial(self._on_lane, readies), tag=readies, jobs=len(readies))
                for k, (i, _) in enumerate(group):
                    out[i] = Pending(sent, k)
            for behind, (i, ready) in enumerate(members[admitted:]):
                turn_s = self.lanes.turn_s(lane, behind)
                out[i] = self._in_lane(ready.claim, now_ms, partial(self._park, ready, now_ms, turn_s))
        return out

    def _admit(self, lane: str, count: int) -> int:
        """`Lanes.admit`, waiting for room while enough task slots stay free for other
        accounts' messages: the task slot held meanwhile is the back pressure that keeps the
        consumer from taking more of a full lane's backlog (each parked job costs a claim, a
        park and a message of its own when it comes back)."""
        with self._blocking_lock:
            may_wait = self._blocked < self.task_slots - max(1, self.task_slots // 4)
            if may_wait:
                self._blocked += 1
        if not may_wait:
            return self.lanes.admit(lane, count)
        try:
            return self.lanes.admit(lane, count, wait_s=self.lanes.budget_s / 2)
        finally:
            with self._blocking_lock:
                self._blocked -= 1

    def close(self, timeout_s: float) -> int:
        """Stop sending: wait up to ``timeout_s`` for the requests under way, and give the
        attempts that have not started back to the schedule (their attempt not counted).
        Returns how many were given back."""
        now_ms = int(self.clock() * 1000)
        given = 0
        for ready in (ready for group in self.lanes.close(timeout_s) for ready in group):
            try:
                if self._park(ready, now_ms, 0.0) == DEFERRED:
                    given += 1
            except redis.RedisError:
                pass  # its lease brings it back
        self.leases.stop()
        return given

    def _in_lane(self, claim: Claim, now_ms: int, step: Callable[[], T]) -> T | Ended:
        """A step of one claimed job: ``crashed`` if it fails; the lease let go once the job
        has ended."""
        result = self._crash_guard(claim, now_ms, step)
        if isinstance(result, Ended):
            self.leases.let_go(claim.job_id)
        return result

    def _on_lane(self, group: list[Ready]) -> list[Ended]:
        """On a lane's thread: one lane's jobs of one message. Their send slots are reserved
        together when near, each is sent at its own on a request thread (the sends overlap),
        fenced right before it leaves, and the outcomes are recorded in one pipeline."""
        ended: dict[str, Ended] = {}  # job id -> its end, for the jobs that did not send
        sends: list[tuple[Ready, Future[tuple[Decision, Outcome, int] | Ended]]] = []
        try:
            lane = RateLimiter.key(group[0].bucket)
            for ready, at_s, crowded in self._slots(group, ended):
                future = self._requests().submit(self._send_at, ready, at_s, crowded, ended)
                future.add_done_callback(partial(_release, self.lanes, lane))
                sends.append((ready, future))
        except redis.RedisError as exc:
            for ready in group:
                if ready.claim.job_id not in ended and all(r is not ready for r, _ in sends):
                    ended[ready.claim.job_id] = self._redis_failed(ready.claim, exc)
        # One wake when the last send ends, not one per send as each result was awaited in turn.
        futures.wait([future for _, future in sends])
        sent: list[tuple[Ready, Decision, Outcome, int]] = []
        for ready, future in sends:
            claim = ready.claim
            try:
                result = future.result()
            except redis.RedisError as exc:
                ended[claim.job_id] = self._redis_failed(claim, exc)
                continue
            except Exception as exc:
                ended[claim.job_id] = self._in_lane(claim, int(self.clock() * 1000), partial(_reraise, exc))
                continue
            if isinstance(result, Ended):
                ended[claim.job_id] = result
            else:
                sent.append((ready, *result))
        if sent:
            self._record_sent(sent, ended)
        for ready in group:
            self.leases.let_go(ready.claim.job_id)
        return [ended[ready.claim.job_id] for ready in group]

    def _slots(self, group: list[Ready], ended: dict[str, Ended]) -> Iterator[tuple[Ready, float, bool]]:
        """Each job of the group with the time (``clock``) of its send slot, reserved only when
        at most `SLOT_WAIT_S` away: the first few at once, the others as their turn nears; and
        whether the bucket was crowded (its next free slot already ahead, so the slots after
        these are others'). Past the lane's budget, the rest are parked (their outcome put in
        ``ended``)."""
        if self.limiter is None:
            now = self.clock()
            for ready in group:
                yield ready, now, False
            return
        pending, started = list(group), self.clock()
        for _ in range(MAX_SLOT_TRIES):
            slots, next_at = self.limiter.reserve_up_to(pending[0].bucket, len(pending), SLOT_WAIT_S)
            # The limiter's times are time.time()'s; this clock may be a test's.
            shift = self.clock() - time.time()
            crowded = next_at - time.time() > CROWDED_S
            for ready, at in zip(pending, slots, strict=False):
                yield ready, at + shift, crowded
            pending = pending[len(slots) :]
            if not pending:
                return
            if not slots:
                next_s = next_at - time.time()
                if self.clock() - started + next_s > self.lanes.budget_s:
                    break
                self.sleep(next_s - SLOT_WAIT_S / 2)
        now_ms = int(self.clock() * 1000)
        for ready in pending:
            ended[ready.claim.job_id] = self._in_lane(
                ready.claim, now_ms, partial(self._park, ready, now_ms, SLOT_WAIT_S / 2)
            )

    def _send_at(
        self, ready: Ready, at_s: float, crowded: bool, ended: dict[str, Ended]
    ) -> tuple[Decision, Outcome, int] | Ended:
        """On a request thread: wait for the slot, then fence and send. A slot reserved before
        a 429 held the bucket back is void, and so is one in a crowded bucket that this thread
        woke too late for (a busy process): a new one is taken. A busy process can also hold
        a thread up after that check; in a crowded bucket the transport stops the request
        right before its first byte if it is late by then (`transport.LEAVE_BY`), and it takes
        a new slot too. After `LATE_TRIES` slots the job is parked (its attempt not counted)."""
        for _ in range(LATE_TRIES):
            wait_s = at_s - self.clock()
            if wait_s > 0:
                self.sleep(wait_s)
            if self.limiter is not None and (
                (crowded and self.clock() - at_s > LATE_SLOT_S)
                or self.limiter.held(ready.bucket, ask_redis=wait_s > self.settings.attentive_rate_max_wait_s)
            ):
                again = self._new_slot(ready, ended)
                if again is None:
                    return ended.pop(ready.claim.job_id)
                at_s, crowded = again
                continue
            claim = ready.claim
            if not self.leases.fence(claim.job_id, claim.ticket, int(self.clock() * 1000), self._fence_need_ms):
                log.warning(
                    "job_id=%s not sent: the job was taken over before its send",
                    claim.job_id,
                    extra={"job_id": claim.job_id, "outcome": "skipped:taken_over"},
                )
                return skipped("taken_over")
            # The transport reads time.time(); the slot is on this (maybe a test's) clock.
            leave_by = at_s + LATE_SLOT_S - self.clock() + time.time() if crowded and self.limiter else None
            token = LEAVE_BY.set(leave_by)
            try:
                return self._send(ready)
            except LateToLeave:
                again = self._new_slot(ready, ended)
                if again is None:
                    return ended.pop(ready.claim.job_id)
                at_s, crowded = again
            finally:
                LEAVE_BY.reset(token)
        now_ms = int(self.clock() * 1000)
        return self._in_lane(ready.claim, now_ms, partial(self._park, ready, now_ms, SLOT_WAIT_S / 2))

    def _new_slot(self, ready: Ready, ended: dict[str, Ended]) -> tuple[float, bool] | None:
        """A new send slot for ``ready`` (its time, and whether the bucket is crowded), or None
        when it was parked instead (its outcome is in ``ended``)."""
        for _, at_s, crowded in self._slots([ready], ended):
            return at_s, crowded
        return None

    def _record_sent(self, sent: list[tuple[Ready, Decision, Outcome, int]], ended: dict[str, Ended]) -> None:
        """Record the sends' outcomes in one pipeline, retrying through a Redis blip for up to
        half a lease (the leases are renewed meanwhile): an outcome given up here is a job
        sent again when its lease ends."""
        give_up = self.clock() + self.store.lease_ms / 2000
        pause_s = 0.05
        while True:
            try:
                kept = lua.run_pipeline(
                    self.store.client,
                    [
                        partial(self._record_in, ready, decision, outcome, done_ms)
                        for ready, decision, outcome, done_ms in sent
                    ],
                )
                break
            except redis.RedisError as exc:
                if self.clock() + pause_s > give_up:
                    for ready, *_ in sent:
                        ended[ready.claim.job_id] = self._redis_failed(ready.claim, exc)
                    return
                self.sleep(pause_s)
                pause_s = min(2.0, pause_s * 2)
        for (ready, decision, _, _), was_kept in zip(sent, kept, strict=True):
            if isinstance(was_kept, redis.RedisError):  # this job's script failed, not Redis
                ended[ready.claim.job_id] = self._redis_failed(ready.claim, was_kept)
                continue
            ended[ready.claim.job_id] = Ended.of(decision)
            if not was_kept:
                _taken_over(ready.claim, decision)

    def _record_in(
        self, ready: Ready, decision: Decision, outcome: Outcome, done_ms: int, pipe: redis.client.Pipeline
    ) -> Ended:
        return self._record(ready.claim, done_ms, ready.history, decision, outcome, pipe)

    def _redis_failed(self, claim: Claim, exc: redis.RedisError) -> Ended:
        log.warning(
            "job_id=%s: Redis failed mid-attempt (%s); the job comes back when its lease ends",
            claim.job_id,
            type(exc).__name__,
            extra={"job_id": claim.job_id, "outcome": "skipped:redis"},
        )
        return skipped("redis")

    def _requests(self) -> ThreadPoolExecutor:
        # Built on first use, so in a prefork child after the fork. The lanes' shares keep each
        # lane's sends under SENDER_THREADS // (busy lanes + 1): a new lane finds threads free.
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(SENDER_THREADS, thread_name_prefix="attentive-send")
        return self._pool

    def _crash_guard(self, claim: Claim, now_ms: int, step: Callable[[], T]) -> T | Ended:
        try:
            return step()
        except redis.RedisError:
            # Redis, not the job, failed: the task hands the message back, and if the attempt
            # cannot be recorded its lease brings the job back. Never a poison job.
            raise
        except Exception as exc:
            return self._crashed(claim, now_ms, exc)

    def _crashed(self, claim: Claim, now_ms: int, exc: Exception) -> Ended:
        summary = traceback_summary(exc)
        log.error(
            "job_id=%s crashed the worker: %s",
            claim.job_id,
            summary,
            extra={"job_id": claim.job_id, "outcome": "dead:crashed", "reason": "crashed"},
        )
        sentry.report_crash(exc, claim.job_id)
        history = (claim.history or []) + [
            {"at": _iso(now_ms), "attempt": claim.attempt, "status": None, "error": "crashed"}
        ]
        self._dead(claim, now_ms, history, DeadLetter("crashed", summary), None)
        return dead("crashed")

    def _prepare(self, claim: Claim, now_ms: int) -> Ready | Ended:
        """Everything before the send: a lost previous attempt, validation again, freshness,
        the destination. Returns the job ready to send, or the outcome already recorded."""
        if claim.history is None:
            raise ValueError("job record has a corrupt attempt history")
        history = list(claim.history)
        now = datetime.fromtimestamp(now_ms / 1000, UTC)
        if claim.lost_at_ms is not None:
            history.append(
                {
                    "at": _iso(claim.lost_at_ms),
                    "attempt": claim.attempt - 1,
                    "status": None,
                    "error": "worker lost mid-delivery",
                }
            )
            lost = decide(WorkerLost("the worker died mid-delivery"), claim.attempt - 1, None, now, self.policy, 0.0)
            if isinstance(lost, DeadLetter):
                return self._record(claim, now_ms, history, lost, None)
        try:
            job = parse_job(claim.job_json, self.settings, now, at_enqueue=False)
            account = account_of(job, self.settings)
        except InvalidJob as err:
            return self._record(claim, now_ms, history, DeadLetter(err.reason, str(err)), None)
        kind: str = job.kind
        occurred = getattr(job, "occurredAt", None)
        if kind in freshness.EVENT_KINDS and freshness.is_stale(occurred, now, self.policy.freshness_s):
            detail = (
                f"occurredAt is {freshness.age_s(occurred, now) / 3600:.1f} h old, past the "  # type: ignore[arg-type]
                f"{self.settings.attentive_freshness_hours:g} h window; not sent"
            )
            return self._record(claim, now_ms, history, DeadLetter(Stale.reason, detail), None)
        destination = self.destinations.for_job(job)
        return Ready(claim, job, kind, account, destination, destination.bucket(job, account), occurred, history)

    def _park(self, ready: Ready, now_ms: int, wait_s: float) -> Ended:
        """Give the job back to the schedule for ``wait_s`` (its attempt not counted, no slot
        held), or dead-letter it as stale if the event would be stale by then."""
        claim, bucket = ready.claim, ready.bucket
        due_ms = now_ms + max(0, int(wait_s * 1000))
        if ready.occurred is not None and freshness.is_stale(
            ready.occurred, datetime.fromtimestamp(due_ms / 1000, UTC), self.policy.freshness_s
        ):
            detail = f"the {bucket.lane} lane has no turn for it before the event goes stale"
            return self._record(claim, now_ms, ready.history, DeadLetter(Stale.reason, detail), None)
        self.store.defer(claim, now_ms, due_ms=due_ms, slot_ms=0)
        return DEFERRED

    def _held_back(self, ready: Ready, now_ms: int) -> Ready | Ended:
        """The job, or held if its lane is paused (`worker.pause`) or its circuit open and this
        job is not the probe (`worker.circuit`): back to the schedule, its attempts kept,
        listed for ``resume`` or the circuit's close."""
        lane = lane_of(ready.account.name, ready.destination.name)
        if self.pauses.is_paused(ready.account.name, ready.destination.name):
            recheck_s, outcome = RECHECK_S, Ended("held", "paused")
        elif self.circuits.is_open(lane) and not self.circuits.may_probe(lane):
            recheck_s, outcome = self.settings.attentive_circuit_probe_s, Ended("held", "circuit_open")
        else:
            return ready
        self.store.client.zadd(keys.held(lane), {ready.claim.job_id: now_ms})
        self.store.defer(ready.claim, now_ms, due_ms=now_ms + int(recheck_s * 1000), slot_ms=0)
        return outcome

    def _count_for_circuit(self, ready: Ready, outcome: Outcome) -> None:
        lane = lane_of(ready.account.name, ready.destination.name)
        failed = isinstance(outcome.error, ServerError | NetworkError | Uncertain)
        change = self.circuits.record(lane, failed)
        if change == "opened":
            sentry.report_pause("circuit_open", ready.destination.name)
            log.error(
                "circuit open for %s: most of its requests failed; its jobs are held, one probe every %g s",
                lane,
                self.settings.attentive_circuit_probe_s,
                extra={"account": ready.account.name, "destination": ready.destination.name},
            )
        elif change == "closed":
            log.info("circuit closed for %s: the probe succeeded; its held jobs are due", lane)

    def _paused(self, ready: Ready, decision: Pause, outcome: Outcome, now_ms: int) -> None:
        """A 401/403: pause the lane and list the job as held (its defer is recorded with the
        other outcomes)."""
        account, destination = ready.account.name, ready.destination.name
        if self.pauses.pause(account, destination, decision.reason, outcome.status, now_ms):
            sentry.report_pause(decision.reason, destination)
            log.error(
                "account %s paused at %s after HTTP %s: its jobs are held, not dead-lettered, until "
                "`attentive-relay resume %s`",
                account,
                destination,
                outcome.status,
                account,
                extra={"account": account, "destination": destination, "status": outcome.status},
            )
        self.store.client.zadd(keys.held(lane_of(account, destination)), {ready.claim.job_id: now_ms})

    def _send(self, ready: Ready) -> tuple[Decision, Outcome, int]:
        """Make the call and decide what follows: (decision, outcome, when it ended in epoch ms)."""
        claim = ready.claim
        outcome = ready.destination.deliver(ready.job, ready.account)
        self._adapt_rate(ready.bucket, outcome)
        self._count_for_circuit(ready, outcome)
        done_ms = int(self.clock() * 1000)
        ready.history.append(
            {
                "at": _iso(done_ms),
                "attempt": claim.attempt,
                "status": outcome.status,
                "error": outcome.error.reason if outcome.error else None,
            }
        )
        decision = decide(
            outcome.error,
            claim.attempt,
            ready.occurred,
            datetime.fromtimestamp(done_ms / 1000, UTC),
            self.policy,
            self.rand(),
        )
        if isinstance(decision, Pause):
            self._paused(ready, decision, outcome, done_ms)
        name = str(Ended.of(decision))
        log.info(
            "job_id=%s kind=%s attempt=%d status=%s outcome=%s",
            claim.job_id,
            ready.kind,
            claim.attempt,
            outcome.status,
            name,
            extra={
                "job_id": claim.job_id,
                "kind": ready.kind,
                "endpoint": ready.destination.endpoint(ready.job),
                "account": ready.account.name,
                "attempt": claim.attempt,
                "status": outcome.status,
                "outcome": name,
                "reason": outcome.error.reason if outcome.error else None,
            },
        )
        return decision, outcome, done_ms

    def _adapt_rate(self, bucket: Bucket, outcome: Outcome) -> None:
        """A 429 or an exhausted second at Attentive holds back every worker, not just this job."""
        if self.limiter is None:
            return
        if isinstance(outcome.error, RateLimited):
            self.limiter.back_off(bucket, outcome.error.retry_after or 1.0)
        elif outcome.ratelimit_remaining == 0:
            # Attentive's current second is used up, but the next one may start any moment:
            # a short pause, not a full second (which stalls every worker and snowballs).
            self.limiter.back_off(bucket, EXHAUSTED_SECOND_PAUSE_S)

    def _record(
        self,
        claim: Claim,
        now_ms: int,
        history: list[dict[str, Any]],
        decision: Decision,
        outcome: Outcome | None,
        pipe: redis.client.Pipeline | None = None,
    ) -> Ended:
        """Record the decision; with ``pipe``, only queue the command (the caller checks what
        it returns: False when the delivery had been taken over)."""
        if isinstance(decision, Delivered):
            kept = self.store.delivered(claim, now_ms, pipe)
        elif isinstance(decision, Retry):
            kept = self.store.schedule(claim, now_ms, int(decision.delay_s * 1000), history, pipe)
        elif isinstance(decision, Pause):
            # Held, not failed: the attempt is given back (`worker.pause`).
            kept = self.store.defer(claim, now_ms, now_ms + int(RECHECK_S * 1000), 0, pipe)
        else:
            kept = self._dead(claim, now_ms, history, decision, outcome, pipe)
        if pipe is None and not kept:
            _taken_over(claim, decision)
        return Ended.of(decision)

    def _dead(
        self,
        claim: Claim,
        now_ms: int,
        history: list[dict[str, Any]],
        decision: DeadLetter,
        outcome: Outcome | None,
        pipe: redis.client.Pipeline | None = None,
    ) -> bool:
        error = outcome.error if outcome else None
        level = logging.ERROR if decision.reason == "unauthorized" else logging.WARNING
        log.log(
            level,
            "job_id=%s dead-lettered reason=%s: %s",
            claim.job_id,
            decision.reason,
            decision.detail,
            extra={
                "job_id": claim.job_id,
                "attempt": claim.attempt,
                "outcome": f"dead:{decision.reason}",
                "reason": decision.reason,
                "status": outcome.status if outcome else None,
            },
        )
        job = _job_value(claim.job_json)
        sentry.report_dead_letter(decision.reason, str(job.get("kind", "")) if isinstance(job, dict) else "")
        entry = {
            "job_id": claim.job_id,
            "job": job,
            "reason": decision.reason,
            "detail": decision.detail,
            "status": outcome.status if outcome else None,
            "response": (error.body if error is not None else "")[:MAX_RESPONSE_KEPT],
            "attempts": history,
            "first_seen": _iso(claim.first_seen_ms),
            "last_seen": _iso(now_ms),
            "round": claim.round,
        }
        return self.store.dead_letter(claim, now_ms, decision.reason, entry, pipe)


@dataclass
class Ready:
    """A claimed job that passed every check, about to be sent."""

    claim: Claim
    job: BaseModel
    kind: str
    account: Account
    destination: Destination
    bucket: Bucket
    occurred: datetime | None
    history: list[dict[str, Any]]


def _taken_over(claim: Claim, decision: Decision) -> None:
    log.warning(
        "job_id=%s outcome %s discarded: the delivery was taken over after its lease ended",
        claim.job_id,
        Ended.of(decision),
    )


def _skipped(job_id: str, ticket: str, why: str) -> Ended:
    # gone: already finished; stale: an old copy of the message; busy: another worker holds the
    # lease (if it died, the reaper queues the job again when the lease ends).
    log.info(
        "skipped job_id=%s ticket=%s: %s", job_id, ticket, why, extra={"job_id": job_id, "outcome": f"skipped:{why}"}
    )
    return skipped(why)


def _job_value(job_json: str) -> Any:
    try:
        return json.loads(job_json)
    except ValueError:
        return job_json  # kept as text so a person can still read a corrupt job


@dataclass(frozen=True)
class Pending:
    """A job handed to its lane: ``result()`` waits for its end."""

    group: Future[list[Ended]]
    index: int

    def result(self) -> Ended:
        return self.group.result()[self.index]


def _release(lanes: Lanes, lane: str, _: object) -> None:
    lanes.release(lane)


def _reraise(exc: Exception) -> Ended:
    raise exc
