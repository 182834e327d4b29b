"""Forwarding an erasure to Attentive: file a deletion request per account, then check it
until Attentive reports it processed.

`Forwarder.forward` is what ``attentive-relay erase`` calls once the relay's own copy is
gone: for each account it records a pending request (`worker.privacy.store`) and makes the
first attempt at once, so the operator normally sees Attentive's request id in the command's
output. Whatever is left (a 429, an outage, the command killed) the workers finish: each runs
`worker.privacy.check.PrivacyCheck`, which calls `Forwarder.run_due` about once a second.

Why the value is stored at all, rather than filed only from the command: an erasure must not
depend on Attentive answering within one command's run. Filing from the command alone would
either hold the operator for the whole retry schedule (about an hour through an outage) or
drop the request when it ended, and a killed command would lose it silently. So the value is
kept, apart from the record, for exactly as long as the request is not filed: normally one
round trip to Attentive, made by the command itself.

Every step goes through the same machinery as a delivery: the shared rate limiter (a bucket per
token and endpoint, `worker.privacy.api.PrivacyApi.bucket`; a 429 backs off every worker) and
the retry policy (`worker.policy.decide`: 429, 5xx and network errors retried with full-jitter
backoff up to ``ATTENTIVE_MAX_ATTEMPTS``; any other 4xx at once). A request that cannot be
filed ends ``failed`` with its reason and detail: counted (``privacy_failed:<reason>`` in
the stats hash, `worker.ops.metrics`), logged as an error and listed by ``erase --status``, never
dropped. Checking a filed request never gives up on transient errors: once the attempts are
used up it falls back to checking every ``ATTENTIVE_PRIVACY_POLL_S``, keeping the last error.

Logs name the request, the account, the step and the HTTP status: never the phone number,
the email or the token.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import redis

from producers.accounts import Account
from producers.errors import RateLimited
from producers.settings import Settings
from worker.delivery import EXHAUSTED_SECOND_PAUSE_S
from worker.destinations.base import Bucket, Outcome
from worker.policy import Decision, Delivered, Retry, RetryPolicy, decide
from worker.privacy.api import FILE_LANE, STATUS_LANE, PrivacyApi
from worker.privacy.store import FAILED, FILED, PENDING, PROCESSED, Request, RequestStore
from worker.ratelimit import RateLimiter

log = logging.getLogger("attentive_relay.privacy")

BATCH = 50
"""Requests one `Forwarder.run_due` pass takes at most."""


def request_message(request: str) -> str:
    """The ``requestMsg`` Attentive keeps for its audit trail: names our record, not the person."""
    return f"The person asked the shop to erase their data; forwarded by attentive-relay erase (request {request})."


class Forwarder:
    """Files and checks deletion requests. Thread-safe; one per process."""

    def __init__(
        self,
        settings: Settings,
        store: RequestStore,
        api: PrivacyApi,
        limiter: RateLimiter,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.store = store
        self.api = api
        self.limiter = limiter
        self.policy = RetryPolicy.from_settings(settings)
        self.rand = rand
        self.clock = clock
        self.sleep = sleep

    def forward(self, person: str, subject: str, accounts: Iterable[str]) -> list[dict[str, object]]:
        """Make a request per account for ``person`` (a digest) naming ``subject`` (a canonical
        phone number or email), and try each once now: `record`, then `attempt`."""
        return self.attempt(self.record(person, subject, accounts))

    def record(self, person: str, subject: str, accounts: Iterable[str]) -> list[dict[str, object]]:
        """Store a pending request per account, for the workers to file if `attempt` does not.
        Called before the relay's copy is erased (`producers.store.erasure.erase`'s ``before_delete``),
        so a command killed in between leaves the requests, not a person nobody forwards.
        Returns, per account, its ``request`` (our id), or ``status`` ``skipped`` with the
        ``reason`` for an account that is not configured or has no Attentive token."""
        result: list[dict[str, object]] = []
        for name in accounts:
            account = self.settings.accounts.get(name)
            if account is None or account.token is None or not account.token.get_secret_value():
                why = "not in ATTENTIVE_ACCOUNTS" if account is None else f"{account.token_setting} is not set"
                result.append({"account": name, "status": "skipped", "request_id": None, "reason": why})
                continue
            result.append({"account": name, "request": self.store.create(person, name, subject, self._ms())})
        return result

    def attempt(self, recorded: list[dict[str, object]]) -> list[dict[str, object]]:
        """Try each `record`ed request once now. Returns, per account, its ``status`` (a
        state, or ``skipped``), Attentive's ``request_id`` once filed, and the ``reason`` of a
        failure or skip."""
        result: list[dict[str, object]] = []
        for item in recorded:
            request = item.get("request")
            if not isinstance(request, str):
                result.append(item)
                continue
            self.step(request)
            found = self.store.get(request)
            state = found.state if found else "gone"
            reason = found.reason if found and state == FAILED else None
            result.append(
                {
                    "account": item["account"],
                    "status": state,
                    "request_id": found.request_id if found else None,
                    "reason": reason,
                }
            )
        return result

    def run_due(self, limit: int = BATCH) -> int:
        """Act on the requests that are due (the scheduled check): returns how many were taken."""
        taken = 0
        for request in self.store.due(self._ms(), limit):
            if self.step(request) != "busy":
                taken += 1
        return taken

    def step(self, request: str) -> str:
        """Take ``request`` if it is due and file or check it: its state afterwards, or ``busy``
        when another process has it (or it is not due), ``gone`` when its record expired."""
        now_ms = self._ms()
        lease_ms = int(self.settings.attentive_lease_s * 1000)
        if not self.store.claim(request, now_ms, now_ms + lease_ms):
            return "busy"
        found = self.store.get(request)
        if found is None:
            self.store.forget(request)
            return "gone"
        account = self.settings.accounts.get(found.account)
        if account is None:
            return self._fail(found, "unknown_account", f"account {found.account} is not in ATTENTIVE_ACCOUNTS")
        if found.state == PENDING:
            return self._file(found, account)
        if found.state == FILED:
            return self._check(found, account)
        self.store.settle(request)  # done, yet still listed as due: nothing left to do
        return found.state

    def _file(self, request: Request, account: Account) -> str:
        subject = self.store.subject(request.id)
        if subject is None:
            detail = "the value to file expired before it could be filed; run erase again with --account"
            return self._fail(request, "expired", detail)
        bucket = self.api.bucket(account, FILE_LANE)
        if not self._slot(bucket, request):
            return PENDING
        filed = self.api.file(account, subject, request_message(request.id))
        decision = self._decide(bucket, filed.outcome, request, "file")
        if isinstance(decision, Delivered):
            assert filed.request_id is not None
            now_ms = self._ms()
            self.store.filed(request.id, filed.request_id, now_ms, now_ms + self._poll_ms())
            return FILED
        if isinstance(decision, Retry):
            self._retry(request, decision, filed.outcome)
            return PENDING
        return self._fail(request, decision.reason, decision.detail)

    def _check(self, request: Request, account: Account) -> str:
        assert request.request_id is not None
        bucket = self.api.bucket(account, STATUS_LANE)
        if not self._slot(bucket, request):
            return FILED
        checked = self.api.check(account, request.request_id)
        decision = self._decide(bucket, checked.outcome, request, "check")
        if isinstance(decision, Delivered):
            if checked.processed:
                self.store.processed(request.id, self._ms())
                return PROCESSED
            self.store.later(request.id, self._ms() + self._poll_ms(), attempts=0)
            return FILED
        if isinstance(decision, Retry):
            self._retry(request, decision, checked.outcome)
            return FILED
        error = checked.outcome.error
        if error is not None and error.retryable:
            # Filed is filed: keep checking at the ordinary pace, with the last error shown.
            detail = f"checking: {decision.detail}"
            self.store.later(request.id, self._ms() + self._poll_ms(), attempts=0, reason=error.reason, detail=detail)
            return FILED
        return self._fail(request, decision.reason, f"checking request {request.request_id}: {decision.detail}")

    def _slot(self, bucket: Bucket, request: Request) -> bool:
        """Wait for a send slot in ``bucket`` if it is near; otherwise put the request back
        until its slot comes (False), as a delivery parks a job."""
        slots, next_at = self.limiter.reserve_up_to(bucket, 1, self.settings.attentive_rate_max_wait_s)
        if not slots:
            self.store.later(request.id, int(next_at * 1000))
            return False
        wait = slots[0] - self.clock()
        if wait > 0:
            self.sleep(wait)
        return True

    def _decide(self, bucket: Bucket, outcome: Outcome, request: Request, step: str) -> Decision:
        """Back off the bucket as deliveries do, then the retry policy's decision."""
        if isinstance(outcome.error, RateLimited):
            self.limiter.back_off(bucket, outcome.error.retry_after or 1.0)
        elif outcome.ratelimit_remaining == 0:
            self.limiter.back_off(bucket, EXHAUSTED_SECOND_PAUSE_S)
        attempt = request.attempts + 1
        decision = decide(outcome.error, attempt, None, datetime.now(UTC), self.policy, self.rand())
        log.info(
            "privacy request=%s account=%s step=%s attempt=%d status=%s outcome=%s",
            request.id,
            request.account,
            step,
            attempt,
            outcome.status,
            type(decision).__name__,
            extra={
                "privacy_request": request.id,
                "account": request.account,
                "step": step,
                "attempt": attempt,
                "status": outcome.status,
                "reason": outcome.error.reason if outcome.error else None,
            },
        )
        return decision

    def _retry(self, request: Request, decision: Retry, outcome: Outcome) -> None:
        error = outcome.error
        assert error is not None
        self.store.retry(
            request.id, request.attempts + 1, self._ms() + int(decision.delay_s * 1000), error.reason, str(error)
        )

    def _fail(self, request: Request, reason: str, detail: str) -> str:
        self.store.failed(request.id, reason, detail)
        log.error(
            "privacy request=%s account=%s failed: %s (%s); see attentive-relay erase --status",
            request.id,
            request.account,
            reason,
            detail,
            extra={"privacy_request": request.id, "account": request.account, "reason": reason},
        )
        return FAILED

    def _poll_ms(self) -> int:
        return int(self.settings.attentive_privacy_poll_s * 1000)

    def _ms(self) -> int:
        return int(self.clock() * 1000)


def forwarder_for(settings: Settings, client: redis.Redis, limiter: RateLimiter | None = None) -> Forwarder:
    """A forwarder over ``client`` with the settings' API and rate limiter."""
    from worker.ratelimit import for_settings

    return Forwarder(settings, RequestStore(client), PrivacyApi(settings), limiter or for_settings(settings, client))


def person_of(client: redis.Redis, settings: Settings, identifier: str) -> str:
    """The keyed hash naming a person in requests: the digest their erasure index is named by
    (`producers.store.erasure.person_key`), so it reveals nothing the index did not."""
    from producers.store import keys
    from producers.store.erasure import person_key, secret

    return person_key(secret(client, settings), identifier).removeprefix(keys.person(""))
