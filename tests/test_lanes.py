"""Sender threads shared fairly between lanes (`worker.lanes`)."""

from __future__ import annotations

import threading
import time
from functools import partial

import pytest

from worker.lanes import FIRST_PACE_S, MAX_FILLS, Lanes


def test_a_new_lane_starts_at_once_while_another_lane_holds_its_whole_share():
    lanes = Lanes(threads=8, budget_s=5.0)
    release = threading.Event()
    slow = [lanes.submit("a", lambda: release.wait(10)) for _ in range(20)]
    deadline = time.monotonic() + 5
    while lanes.load().get("a", (0, 0))[1] < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lanes.load()["a"] == (16, 4), "lane a alone may use half the threads"
    started = time.monotonic()
    assert lanes.submit("b", lambda: "b ran").result(timeout=2) == "b ran"
    assert time.monotonic() - started < 0.5
    release.set()
    assert all(f.result(timeout=10) for f in slow)


def test_lanes_take_turns():
    lanes = Lanes(threads=2, budget_s=5.0)  # one thread per lane while one lane has work
    order: list[str] = []
    gate = threading.Event()
    first = lanes.submit("a", lambda: gate.wait(5))
    time.sleep(0.05)
    futures = [lanes.submit(lane, partial(order.append, lane)) for lane in "aaab"]
    gate.set()
    for f in [first, *futures]:
        f.result(timeout=5)
    assert order.index("b") <= 1, f"b waited behind all of a's work: {order}"


def test_admission_fits_the_budget_at_the_lane_s_pace():
    now = [0.0]
    lanes = Lanes(threads=16, budget_s=10.0, clock=lambda: now[0])
    assert lanes.admit("a", 10_000) == 8 * min(MAX_FILLS, 10.0 / FIRST_PACE_S), "an idle lane: a share per pace"
    gate = threading.Event()
    running = [lanes.submit("a", lambda: gate.wait(5)) for _ in range(8)]
    deadline = time.monotonic() + 5
    while lanes.load().get("a", (0, 0))[1] < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    now[0] = 5.0  # the running attempts have held their threads for 5 s: a slow API
    assert lanes.pace_s("a") == pytest.approx(5.0)
    assert lanes.admit("a", 10_000) == 8 * 2 - 8, "two thread-fulls fit in 10 s at 5 s each"
    assert lanes.turn_s("a", 0) == pytest.approx(5.0 / 8)
    gate.set()
    for f in running:
        f.result(timeout=5)


def test_a_failing_function_keeps_its_thread_and_close_hands_back_what_never_started():
    lanes = Lanes(threads=2, budget_s=5.0)
    with pytest.raises(ZeroDivisionError):
        lanes.submit("a", lambda: 1 / 0).result(timeout=5)
    assert lanes.submit("a", lambda: "still serving").result(timeout=5) == "still serving"
    gate = threading.Event()
    busy = lanes.submit("a", lambda: gate.wait(5))
    queued = [lanes.submit("a", lambda: None, tag=i) for i in range(3)]
    time.sleep(0.05)
    threading.Timer(0.2, gate.set).start()
    assert sorted(lanes.close(timeout_s=5)) == [0, 1, 2]
    assert busy.result(timeout=1) is True and all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError):
        lanes.submit("a", lambda: None)
