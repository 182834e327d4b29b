"""A pipeline of Lua scripts in one round trip.

redis-py asks ``SCRIPT EXISTS`` before every pipeline that runs a registered script: a round
trip more each time, on the hot path of every batch of outcomes. Here the scripts are assumed
loaded (they are, after the first run); one that Redis no longer knows (after a restart or a
``SCRIPT FLUSH``) answers NOSCRIPT without running, so the scripts are loaded and exactly
those commands sent again.

Failure contract: a command's own error (a script error) comes back in its place in the
results; a connection error is raised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

Step = Callable[[Any], Any]
"""Queues exactly one command in the pipeline it is given."""


def run(client: redis.Redis, steps: Sequence[Step]) -> list[Any]:
    """Run ``steps`` in one pipeline (not a transaction); each one's result, or its error."""
    results, scripts = _send(client, steps)
    again = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if again:
        for script in scripts:
            script.sha = client.script_load(script.script)
        for i, result in zip(again, _send(client, [steps[i] for i in again])[0], strict=True):
            results[i] = result
    return results


def _send(client: redis.Redis, steps: Sequence[Step]) -> tuple[list[Any], set[Any]]:
    with client.pipeline(transaction=False) as pipe:
        for step in steps:
            step(pipe)
        scripts = set(pipe.scripts)
        pipe.scripts.clear()
        return pipe.execute(raise_on_error=False), scripts
