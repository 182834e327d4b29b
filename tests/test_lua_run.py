"""The one way Lua scripts run (`producers.store.lua.LuaScript`): every script the code builds runs after
Redis forgot its scripts (a restart, ``SCRIPT FLUSH``), called directly, in a pipeline and in a
transaction; and no module registers a script with redis-py any more.

A script is run here with made-up keys and zeros for arguments: what is checked is that Redis
ran it (its reply, or the script's own error), never that it answered NOSCRIPT.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from producers.store import lua

ROOT = Path(__file__).resolve().parent.parent
MODULES = (
    "producers.store.enqueue",
    "producers.store.erasure",
    "worker.jobstore",
    "worker.held",
    "worker.lease",
    "worker.ratelimit",
    "worker.privacy.store",
)
KEYS = [f"lua-test:{i}" for i in range(12)]


def _scripts() -> list[lua.LuaScript]:
    """Every module-level `LuaScript` of the modules that run scripts."""
    found = {
        value.sha: value
        for name in MODULES
        for value in vars(importlib.import_module(name)).values()
        if isinstance(value, lua.LuaScript)
    }
    assert len(found) >= 15, "the scripts were not found"
    return list(found.values())


def _args(script: lua.LuaScript) -> list[Any]:
    """Zeros: counts of nothing, times at the epoch."""
    return [0] * 20


def _ran(reply: Any) -> bool:
    return not isinstance(reply, NoScriptError)


@pytest.mark.parametrize("script", _scripts(), ids=lambda s: s.name)
def test_runs_after_script_flush_called_directly(redis_client: redis.Redis, script: lua.LuaScript) -> None:
    redis_client.script_flush()
    try:
        script(redis_client, KEYS, _args(script))
    except NoScriptError:
        raise AssertionError(f"{script.name} answered NOSCRIPT") from None
    except redis.ResponseError:
        pass  # the script ran and failed on made-up arguments
    assert redis_client.script_exists(script.sha) == [True], "EVAL loads it for the next call"


@pytest.mark.parametrize("script", _scripts(), ids=lambda s: s.name)
def test_runs_after_script_flush_in_a_pipeline(redis_client: redis.Redis, script: lua.LuaScript) -> None:
    redis_client.script_flush()
    steps: list[lua.Step] = [
        partial(script.queue, keys=KEYS, args=_args(script)),
        lambda pipe: pipe.set("lua-test:other", 1),
        partial(script.queue, keys=KEYS, args=_args(script)),
    ]
    results = lua.run_pipeline(redis_client, steps)
    assert all(_ran(r) for r in results), results
    assert results[1] is True
    assert redis_client.script_exists(script.sha) == [True]


@pytest.mark.parametrize("script", _scripts(), ids=lambda s: s.name)
def test_runs_after_script_flush_in_a_transaction(redis_client: redis.Redis, script: lua.LuaScript) -> None:
    redis_client.script_flush()
    with redis_client.pipeline(transaction=True) as pipe:
        pipe.set("lua-test:other", 1)
        script.queue_in_transaction(pipe, KEYS, _args(script))
        results = pipe.execute(raise_on_error=False)
    assert all(_ran(r) for r in results), results


def test_async_call_runs_after_script_flush(redis_client: redis.Redis) -> None:
    echo = lua.LuaScript("test/echo", "return {KEYS[1], ARGV[1]}")
    url = redis_client.connection_pool.connection_kwargs
    redis_client.script_flush()

    async def run() -> Any:
        client = redis.asyncio.Redis(host=url["host"], port=url["port"])
        try:
            return [await echo.acall(client, ["k"], ["v"]), await echo.acall(client, ["k2"], ["v2"])]
        finally:
            await client.aclose()

    assert asyncio.run(run()) == [[b"k", b"v"], [b"k2", b"v2"]]


def test_a_script_error_stays_in_its_place_in_a_pipeline(redis_client: redis.Redis) -> None:
    fails = lua.LuaScript("test/fails", "return redis.error_reply('no')")
    ok = lua.LuaScript("test/ok", "return 7")
    redis_client.script_flush()
    results = lua.run_pipeline(redis_client, [partial(ok.queue, keys=[]), partial(fails.queue, keys=[])])
    assert results[0] == 7
    assert isinstance(results[1], redis.ResponseError) and not isinstance(results[1], NoScriptError)


def test_requires_prepends_the_libraries() -> None:
    composed = lua.script("worker", "jobstore_finish", requires=("jobstore_requeue",))
    assert composed.text == lua.source("worker", "jobstore_requeue") + lua.source("worker", "jobstore_finish")
    assert composed.name == "worker/jobstore_finish"


def test_no_module_registers_a_script() -> None:
    """redis-py's ``register_script`` asks ``SCRIPT EXISTS`` before each pipeline; scripts run
    through `producers.store.lua` instead."""
    callers = []
    for path in [*(ROOT / "worker").rglob("*.py"), *(ROOT / "producers").rglob("*.py")]:
        if path == ROOT / "producers" / "store" / "lua.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("register_script", "evalsha", "eval"):
                callers.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.attr}")
    assert callers == []
