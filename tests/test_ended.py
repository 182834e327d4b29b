"""An attempt's end (`worker.ended`): typed inside the worker, named at the edges."""

from __future__ import annotations

from collections import Counter

import pytest

from worker.ended import DEFERRED, DELIVERED, Ended, dead, skipped
from worker.policy import DeadLetter, Delivered, Pause, Retry


@pytest.mark.parametrize(
    ("decision", "name"),
    [
        (Delivered(), "delivered"),
        (Retry(1.25), "retry_in_1.2s"),
        (Retry(0.75), "retry_in_0.8s"),
        (Pause("unauthorized", "HTTP 401"), "held:unauthorized"),
        (DeadLetter("rejected", "HTTP 400"), "dead:rejected"),
    ],
)
def test_each_decision_has_the_name_logs_and_flower_show(decision, name):
    assert str(Ended.of(decision)) == name


def test_retries_are_counted_as_one_whatever_their_delay():
    ends = [Ended.of(Retry(0.1)), Ended.of(Retry(30.0)), DELIVERED, dead("stale"), skipped("gone"), DEFERRED]
    assert Counter(e.counted for e in ends) == {
        "retry": 2,
        "delivered": 1,
        "dead:stale": 1,
        "skipped:gone": 1,
        "deferred": 1,
    }


def test_ends_are_values():
    assert Ended.of(Delivered()) == DELIVERED and dead("crashed") == Ended("dead", "crashed")
    assert Ended.of(Retry(2.0)) != Ended.of(Retry(3.0))
