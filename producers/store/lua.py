"""Lua scripts kept as ``.lua`` files, and the one way they are run.

``source("worker", "jobstore_finish")`` is the text of ``worker/lua/jobstore_finish.lua``, read
once (UTF-8, exactly as stored). ``script("worker", "jobstore_finish", requires=("jobstore_requeue",))``
is a `LuaScript`: that text after the library files it needs, named in Redis by its SHA-1. The
files ship as package data (``lua/*.lua`` in pyproject.toml); a missing one raises
``FileNotFoundError`` naming it (an install made without the package data).

A script runs three ways, and none asks ``SCRIPT EXISTS`` first (redis-py's ``register_script``
does, a round trip more before every pipeline):

- called on a client (``SCRIPT(client, keys, args)``, or `LuaScript.acall` on ``redis.asyncio``):
  EVALSHA, then EVAL when Redis answers NOSCRIPT (after a restart or ``SCRIPT FLUSH``; EVAL
  loads it again for the next call);
- queued in a pipeline (`LuaScript.queue`): EVALSHA, the pipeline sent by `run_pipeline`, which
  loads the scripts Redis did not know and sends exactly those commands again;
- queued inside MULTI/EXEC (`LuaScript.queue_in_transaction`): EVAL, since a NOSCRIPT cannot be
  retried inside a transaction (the commands before it would have run).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis
    import redis.asyncio
    from redis.asyncio.client import Pipeline as AsyncPipeline

Step = Callable[[Any], Any]
"""Queues exactly one command in the pipeline it is given (`run_pipeline`)."""

_KNOWN: dict[str, LuaScript] = {}
"""Every script built, by SHA-1: what `run_pipeline` loads when Redis answers NOSCRIPT."""


@functools.cache
def source(package: str, name: str) -> str:
    """The text of ``<package>/lua/<name>.lua``."""
    return (files(package) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def script(package: str, name: str, requires: Sequence[str] = ()) -> LuaScript:
    """``<package>/lua/<name>.lua`` as a `LuaScript`, after the library files it ``requires``
    (``<package>/lua/<library>.lua``, in that order: Lua functions it calls)."""
    text = "".join(source(package, library) for library in requires) + source(package, name)
    return LuaScript(f"{package}/{name}", text)


@dataclass(frozen=True)
class LuaScript:
    """One Lua script: ``name`` for people, ``text`` for Redis, ``sha`` (its SHA-1) for EVALSHA.

    Failure contract, every way it runs: the script's own error is a ``redis.ResponseError``
    (in a pipeline, in its place among the results); a connection error is raised.
    """

    name: str
    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        sha = hashlib.sha1(self.text.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
        object.__setattr__(self, "sha", sha)
        _KNOWN[sha] = self

    def __call__(self, client: redis.Redis, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        """Run the script on ``client``: its reply."""
        from redis.exceptions import NoScriptError

        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.eval(self.text, len(keys), *keys, *args)

    async def acall(self, client: redis.asyncio.Redis, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        """`__call__` on a ``redis.asyncio`` client."""
        from redis.exceptions import NoScriptError

        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.text, len(keys), *keys, *args)

    def queue(self, pipe: redis.client.Pipeline, keys: Sequence[Any], args: Sequence[Any] = ()) -> None:
        """Queue the script (EVALSHA) in ``pipe``, a pipeline `run_pipeline` sends."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    def queue_in_transaction(
        self, pipe: redis.client.Pipeline | AsyncPipeline, keys: Sequence[Any], args: Sequence[Any] = ()
    ) -> None:
        """Queue the script (EVAL: its whole text) in ``pipe``, a MULTI/EXEC pipeline the caller
        executes. Queuing sends nothing, on a sync or a ``redis.asyncio`` pipeline."""
        pipe.eval(self.text, len(keys), *keys, *args)


def run_pipeline(client: redis.Redis, steps: Sequence[Step]) -> list[Any]:
    """Run ``steps`` in one pipeline (not a transaction): each one's result, or its error.

    The scripts queued there (`LuaScript.queue`) are assumed loaded, as they are after their
    first run; the commands Redis answers NOSCRIPT did not run, so their scripts are loaded and
    exactly those steps sent again. A command's own error comes back in its place; a
    connection error is raised.
    """
    from redis.exceptions import NoScriptError

    results, shas = _send(client, steps)
    again = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if again:
        for sha in {shas[i] for i in again}:
            client.script_load(_KNOWN[sha].text)
        for i, result in zip(again, _send(client, [steps[i] for i in again])[0], strict=True):
            results[i] = result
    return results


def _send(client: redis.Redis, steps: Sequence[Step]) -> tuple[list[Any], list[str]]:
    """Each step's result, and the SHA-1 each one's EVALSHA named ('' for another command)."""
    with client.pipeline(transaction=False) as pipe:
        for step in steps:
            step(pipe)
        shas = [str(args[1]) if str(args[0]).upper() == "EVALSHA" else "" for args, _ in pipe.command_stack]
        return pipe.execute(raise_on_error=False), shas
