"""The retry policy as pure functions: every input is passed in, nothing reads the clock."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta

import pytest

from producers import errors
from producers.errors import (
    Crashed,
    InvalidJob,
    NetworkError,
    Problem,
    RateLimited,
    Rejected,
    RelayError,
    ServerError,
    Stale,
    Unauthorized,
    Uncertain,
    WorkerLost,
)
from producers.settings import Settings
from worker.policy import DeadLetter, Delivered, Retry, RetryPolicy, backoff_s, decide

NOW = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
WINDOW_S = 12 * 3600.0
POLICY = RetryPolicy(max_attempts=10, base_s=2.0, max_s=60.0, freshness_s=WINDOW_S)
FRESH = NOW - timedelta(minutes=1)


def make(cls: type[RelayError]) -> RelayError:
    if cls is InvalidJob:
        return InvalidJob([Problem("user.phone", "not a valid phone number")])
    return cls(f"{cls.__name__} happened")


PERMANENT = [InvalidJob, Rejected, Unauthorized, Stale, Crashed]
TRANSIENT = [RateLimited, ServerError, NetworkError, WorkerLost]


def test_delivered_on_none() -> None:
    assert decide(None, 1, FRESH, NOW, POLICY, 0.5) == Delivered()
    # Success is success, even on the last attempt of an event about to go stale.
    assert decide(None, 10, NOW - timedelta(seconds=WINDOW_S), NOW, POLICY, 0.99) == Delivered()


@pytest.mark.parametrize("cls", PERMANENT)
@pytest.mark.parametrize("attempt", [1, 3])
def test_permanent_errors_dead_letter_at_once(cls: type[RelayError], attempt: int) -> None:
    error = make(cls)
    for occurred in (FRESH, None):
        assert decide(error, attempt, occurred, NOW, POLICY, 0.5) == DeadLetter(cls.reason, str(error))


@pytest.mark.parametrize("cls", TRANSIENT)
@pytest.mark.parametrize(
    ("attempt", "rand", "delay"),
    [(1, 0.5, 1.0), (1, 0.0, 0.0), (2, 0.5, 2.0), (3, 0.25, 2.0), (5, 0.75, 24.0), (6, 0.5, 30.0), (9, 0.999, 59.94)],
)
def test_transient_errors_retry_with_full_jitter(
    cls: type[RelayError], attempt: int, rand: float, delay: float
) -> None:
    decision = decide(make(cls), attempt, FRESH, NOW, POLICY, rand)
    assert isinstance(decision, Retry)
    assert decision.delay_s == pytest.approx(delay)
    assert decision.delay_s == pytest.approx(rand * min(POLICY.max_s, POLICY.base_s * 2 ** (attempt - 1)))


@pytest.mark.parametrize(
    ("attempt", "rand", "delay"), [(1, 0.0, 0.0), (1, 0.5, 1.0), (4, 0.5, 8.0), (7, 1.0, 60.0), (200, 0.5, 30.0)]
)
def test_backoff_formula(attempt: int, rand: float, delay: float) -> None:
    assert backoff_s(attempt, POLICY, rand) == pytest.approx(delay)


def test_backoff_never_exceeds_the_ceiling() -> None:
    for attempt in range(1, 80):
        ceiling = min(POLICY.max_s, POLICY.base_s * 2 ** (attempt - 1))
        assert 0 <= backoff_s(attempt, POLICY, 0.999999) <= ceiling


@pytest.mark.parametrize("cls", TRANSIENT)
def test_attempts_exhausted_dead_letters_with_the_errors_reason(cls: type[RelayError]) -> None:
    error = make(cls)
    assert isinstance(decide(error, 9, FRESH, NOW, POLICY, 0.5), Retry)
    for attempt in (10, 11):
        decision = decide(error, attempt, FRESH, NOW, POLICY, 0.5)
        assert isinstance(decision, DeadLetter)
        assert decision.reason == cls.reason
        assert str(attempt) in decision.detail and str(error) in decision.detail


def test_single_attempt_policy_never_retries() -> None:
    policy = RetryPolicy(max_attempts=1, base_s=2.0, max_s=60.0, freshness_s=WINDOW_S)
    assert decide(make(ServerError), 1, None, NOW, policy, 0.5) == DeadLetter(
        "server_error", "gave up after 1 attempts; last: ServerError happened"
    )


@pytest.mark.parametrize(("retry_after", "delay"), [(7.0, 7.0), (0.0, 0.0), (60.0, 60.0), (61.0, 60.0), (1e9, 60.0)])
def test_rate_limited_retry_after_honoured_and_capped(retry_after: float, delay: float) -> None:
    error = RateLimited("HTTP 429", retry_after=retry_after)
    for rand in (0.0, 0.5, 0.99):
        assert decide(error, 1, FRESH, NOW, POLICY, rand) == Retry(delay)


def test_rate_limited_without_retry_after_uses_jitter() -> None:
    assert decide(RateLimited("HTTP 429"), 3, FRESH, NOW, POLICY, 0.5) == Retry(4.0)


def test_retry_past_freshness_window_dead_letters_stale() -> None:
    occurred = NOW - timedelta(seconds=WINDOW_S - 10)  # 10 s of freshness left
    assert decide(RateLimited("429", retry_after=10), 1, occurred, NOW, POLICY, 0.5) == Retry(10.0)
    decision = decide(RateLimited("429", retry_after=11), 1, occurred, NOW, POLICY, 0.5)
    assert isinstance(decision, DeadLetter) and decision.reason == "stale"
    # Jitter: attempt 4 can wait up to 16 s; 0.5 -> 8 s fits, 0.75 -> 12 s does not.
    assert decide(make(ServerError), 4, occurred, NOW, POLICY, 0.5) == Retry(8.0)
    late = decide(make(ServerError), 4, occurred, NOW, POLICY, 0.75)
    assert isinstance(late, DeadLetter) and late.reason == Stale.reason and "ServerError happened" in late.detail


def test_already_stale_event_dead_letters_stale_on_transient_error() -> None:
    occurred = NOW - timedelta(hours=13)
    decision = decide(make(NetworkError), 1, occurred, NOW, POLICY, 0.0)
    assert isinstance(decision, DeadLetter) and decision.reason == "stale"


def test_attributes_never_go_stale() -> None:
    assert decide(RateLimited("429", retry_after=1e9), 1, None, NOW, POLICY, 0.5) == Retry(60.0)
    assert decide(make(ServerError), 9, None, NOW + timedelta(days=365), POLICY, 0.5) == Retry(30.0)


def test_policy_from_settings() -> None:
    settings = Settings(
        attentive_max_attempts=7, attentive_backoff_base_s=3, attentive_backoff_max_s=90, attentive_freshness_hours=2
    )
    assert RetryPolicy.from_settings(settings) == RetryPolicy(7, 3.0, 90.0, 7200.0)
    assert RetryPolicy.from_settings(Settings()) == RetryPolicy(12, 5.0, 1800.0, 43200.0)


EXPECTED = {
    InvalidJob: DeadLetter,
    Stale: DeadLetter,
    Rejected: DeadLetter,
    Unauthorized: DeadLetter,
    Crashed: DeadLetter,
    Uncertain: DeadLetter,
    RateLimited: Retry,
    ServerError: Retry,
    NetworkError: Retry,
    WorkerLost: Retry,
}


def _classes_with_a_reason() -> list[type[RelayError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, RelayError) and "reason" in vars(cls) and cls is not RelayError
    ]


def test_every_error_with_a_reason_maps_to_exactly_one_decision_type() -> None:
    classes = _classes_with_a_reason()
    assert set(classes) == set(EXPECTED)
    assert sorted(cls.reason for cls in classes) == sorted(errors.REASONS)
    assert len(set(errors.REASONS)) == len(errors.REASONS)
    for cls in classes:
        seen = set()
        for attempt in (1, 2, 5):
            for rand in (0.0, 0.5, 0.999):
                decision = decide(make(cls), attempt, None, NOW, POLICY, rand)
                seen.add(type(decision))
                if isinstance(decision, DeadLetter):
                    assert decision.reason == cls.reason
        assert seen == {EXPECTED[cls]}, cls.__name__
        assert cls.retryable is (EXPECTED[cls] is Retry)
