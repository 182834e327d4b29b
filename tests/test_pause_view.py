"""How a worker process sees the paused and circuit-open lanes (`worker.pause.LaneSet`): a
cached view, read again at most once per `REFRESH_S` by one thread, however many ask."""

from __future__ import annotations

import threading
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from producers.store import keys
from worker.pause import LaneSet


def test_hundreds_of_threads_asking_at_once_read_redis_once(settings, redis_client):
    class Counted(redis.Redis):
        reads = 0

        def execute_command(self, *args: Any, **options: Any) -> Any:
            if args and args[0] == "HKEYS":
                Counted.reads += 1
            return super().execute_command(*args, **options)

    redis_client.hset(keys.PAUSED, "lane-a", "{}")
    now = [100.0]
    view = LaneSet(Counted.from_url(settings.redis_url.get_secret_value()), keys.PAUSED, clock=lambda: now[0])
    start = threading.Barrier(200)
    answers: list[bool] = []

    def ask() -> None:
        start.wait(10)
        answers.append("lane-a" in view)

    threads = [threading.Thread(target=ask) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert Counted.reads == 1, "one thread reads; the others answer from the view"
    assert answers.count(True) >= 1 and len(answers) == 200
    now[0] += 1.5  # past REFRESH_S: read again, once
    assert "lane-a" in view and "lane-b" not in view
    assert Counted.reads == 2


def test_a_failed_read_is_tried_again_at_the_next_question(settings, redis_client):
    # No retries: redis-py's default retries with backoff would only slow the test down.
    view = LaneSet(redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)), keys.PAUSED)
    for _ in range(2):
        try:
            "lane-a" in view  # noqa: B015
        except redis.ConnectionError:
            pass
        else:
            raise AssertionError("an unreachable Redis is not a lane set")
