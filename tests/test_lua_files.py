"""The Lua scripts kept as ``.lua`` files (`producers.store.lua`): each compiles, each is used, each ships.

Redis compiles a script on ``SCRIPT LOAD`` without running it, so a syntax error shows here with
the file's name rather than at the first job that needs the script.
"""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from pathlib import Path

import redis

from producers.store import lua

ROOT = Path(__file__).resolve().parent.parent


def _files() -> dict[tuple[str, str], Path]:
    """(package, name) -> file, for every ``<package>/lua/<name>.lua``."""
    found = {}
    for path in sorted([*(ROOT / "worker").rglob("lua/*.lua"), *(ROOT / "producers").rglob("lua/*.lua")]):
        package = ".".join(path.parent.parent.relative_to(ROOT).parts)
        found[(package, path.stem)] = path
    return found


def _sources() -> set[tuple[str, str]]:
    """(package, name) of every file a ``lua.source("package", "name")`` or
    ``lua.script("package", "name", requires=...)`` call in the code reads (its libraries included:
    named as strings there, or through a module constant such as ``REQUEUE_LIBRARY``)."""
    calls: set[tuple[str, str]] = set()
    for path in [*(ROOT / "worker").rglob("*.py"), *(ROOT / "producers").rglob("*.py")]:
        tree = ast.parse(path.read_text(), str(path))
        constants = {
            target.id: node.value.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("source", "script")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "lua"
            ):
                package, name = (str(arg.value) for arg in node.args if isinstance(arg, ast.Constant))
                calls.add((package, name))
                for keyword in node.keywords:
                    if keyword.arg == "requires":
                        for library in ast.walk(keyword.value):
                            if isinstance(library, ast.Constant) and isinstance(library.value, str):
                                calls.add((package, library.value))
                            elif isinstance(library, ast.Name) and isinstance(constants.get(library.id), str):
                                calls.add((package, str(constants[library.id])))
    return calls


def test_every_script_compiles(redis_client: redis.Redis) -> None:
    files = _files()
    assert len(files) >= 10, "the .lua files were not found"
    for (package, name), path in files.items():
        text = lua.source(package, name)
        assert text == path.read_text(encoding="utf-8")
        try:
            redis_client.script_load(text)
        except redis.ResponseError as exc:
            raise AssertionError(f"{path.relative_to(ROOT)} does not compile: {exc}") from None


def test_every_file_is_used_and_every_use_has_its_file() -> None:
    files, sources = set(_files()), _sources()
    assert files - sources == set(), "no lua.source() reads these"
    assert sources - files == set(), "lua.source() names a file that is not there"


def test_the_files_ship_as_package_data() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for (package, _), path in _files().items():
        relative = str(path.relative_to(ROOT / package.replace(".", "/")))
        patterns = [*data.get("*", []), *data.get(package, [])]
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), f"{path} is not package data"
