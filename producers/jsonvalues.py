"""What a job or a Segment message may hold: values that JSON carries faithfully.

Python's ``json`` module reads ``NaN``, ``Infinity`` and ``1e400`` (which becomes infinity),
integers of thousands of digits, and ``\\udcff`` escapes (lone surrogates); web apps can hand
the producer such values directly too. Sent on, NaN and Infinity would become ``null``
(pydantic's JSON output), giant integers lose precision or crash on ``str()``, and lone
surrogates cannot be encoded. So before any other rule, every value of an input is checked:

- numbers must be finite and at most `MAX_NUMBER` (2^53 − 1) in magnitude, the largest integer
  that every JSON parser (many read numbers as IEEE doubles) keeps exactly; larger
  identifiers belong in strings;
- strings and object keys must be valid Unicode (no lone surrogates); keys must be strings;
- objects and arrays nest at most `MAX_NESTING` levels, the job or message itself being the
  first: as deep as properties may go under `rules.MAX_DEPTH` (which counts the properties
  object and the values in it), and no deeper.

`problems` reports each offending value by its field path and the rule, never the value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from producers import rules
from producers.errors import Problem

#: 2^53 − 1: integers beyond this are not exact in parsers that read numbers as doubles.
MAX_NUMBER = 2**53 - 1
#: Containers, the job itself first: properties at level 2 nested as `rules.json_depth` allows.
MAX_NESTING = rules.MAX_DEPTH
#: Reporting stops here: a list of a million NaNs needs no million-line error.
MAX_PROBLEMS = 20

NOT_FINITE = "must be a finite number (NaN and Infinity cannot be sent)"
TOO_LARGE = f"must be a number between -{MAX_NUMBER} and {MAX_NUMBER} (send larger identifiers as strings)"
NOT_UNICODE = "must be valid Unicode text (it holds a lone surrogate, e.g. from bytes that are not UTF-8)"
KEY_NOT_UNICODE = "names must be valid Unicode text (one holds a lone surrogate)"
KEY_NOT_TEXT = "names must be strings"
TOO_DEEP = f"nested deeper than {rules.MAX_DEPTH} levels"


def is_unicode(text: str) -> bool:
    """True when ``text`` can be written as UTF-8 (it holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` with any lone surrogate written as ``\\udcff``, so that it can be printed."""
    return text if is_unicode(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _key_path(path: str, key: str) -> str:
    # A name that cannot be encoded must not break the error message that names it.
    name = printable(key)
    return f"{path}.{name}" if path else name


def _scalar_rule(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return NOT_FINITE
        return TOO_LARGE if abs(value) > MAX_NUMBER else None
    if isinstance(value, int):
        return TOO_LARGE if abs(value) > MAX_NUMBER else None
    if isinstance(value, str):
        return None if is_unicode(value) else NOT_UNICODE
    return None  # other types are for the models to judge


def problems(value: Any, path: str = "") -> list[Problem]:
    """Every value in ``value`` that JSON cannot carry faithfully, at most `MAX_PROBLEMS`.

    Walks dicts, lists and tuples without recursion, so hostile nesting cannot raise
    ``RecursionError``; a container deeper than `MAX_NESTING` is reported once, at its path,
    and not entered. Never raises.
    """
    found: list[Problem] = []
    stack: list[tuple[Any, str, int]] = [(value, path, 1)]
    while stack and len(found) < MAX_PROBLEMS:
        current, where, depth = stack.pop()
        if isinstance(current, _BadName):
            found.append(Problem(where, current.rule))
        elif isinstance(current, dict | list | tuple) and depth > MAX_NESTING:
            found.append(Problem(where, TOO_DEEP))
        elif isinstance(current, dict):
            stack.extend(reversed([_child(where, key, child, depth) for key, child in current.items()]))
        elif isinstance(current, list | tuple):
            stack.extend(reversed([(child, f"{where}[{i}]", depth + 1) for i, child in enumerate(current)]))
        elif rule := _scalar_rule(current):
            found.append(Problem(where, rule))
    return found


@dataclass(frozen=True)
class _BadName:
    """Stands in a walk for a member whose name is refused, so problems keep document order."""

    rule: str


def _child(where: str, key: Any, child: Any, depth: int) -> tuple[Any, str, int]:
    if not isinstance(key, str):
        return _BadName(KEY_NOT_TEXT), where, depth
    if not is_unicode(key):
        return _BadName(KEY_NOT_UNICODE), _key_path(where, key), depth
    return child, _key_path(where, key), depth + 1
