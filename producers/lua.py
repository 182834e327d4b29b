"""Lua scripts kept as ``.lua`` files in a ``lua/`` directory of the package that runs them.

``source("worker", "jobstore_finish")`` is the text of ``worker/lua/jobstore_finish.lua``, read
once (UTF-8, exactly as stored: a script's SHA-1, by which Redis names it, is that of this text).
The files ship as package data (``lua/*.lua`` in pyproject.toml). Raises ``FileNotFoundError``
naming the file when it is missing (an install made without the package data).
"""

from __future__ import annotations

import functools
from importlib.resources import files


@functools.cache
def source(package: str, name: str) -> str:
    """The text of ``<package>/lua/<name>.lua``."""
    return (files(package) / "lua" / f"{name}.lua").read_text(encoding="utf-8")
