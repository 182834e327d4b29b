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
`loads` reads JSON text so that one such value cannot make a whole batch unreadable.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from producers.errors import Problem
from producers.job import rules

#: 2^53 − 1: integers beyond this are not exact in parsers that read numbers as doubles.
MAX_NUMBER = 2**53 - 1
#: Containers, the job itself first: properties at level 2 nested as `rules.json_depth` allows.
MAX_NESTING = rules.MAX_DEPTH
#: Reporting stops here: a list of a million NaNs needs no million-line error.
MAX_PROBLEMS = 20

#: Nesting kept by `loads`; anything deeper is past `MAX_NESTING` for any batch of messages.
LOADS_NESTING = 64

NOT_FINITE = "must be a finite number (NaN and Infinity cannot be sent)"
TOO_LARGE = f"must be a number between -{MAX_NUMBER} and {MAX_NUMBER} (send larger identifiers as strings)"
NOT_UNICODE = "must be valid Unicode text (it holds a lone surrogate, e.g. from bytes that are not UTF-8)"
KEY_NOT_UNICODE = "names must be valid Unicode text (one holds a lone surrogate)"
KEY_NOT_TEXT = "names must be strings"
TOO_DEEP = f"nested deeper than {rules.MAX_DEPTH} levels"


def is_unicode(text: str) -> bool:
    """True when ``text`` can be written as UTF-8 (it holds no lone surrogate)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` with any lone surrogate written as ``\\udcff``, so that it can be printed."""
    return text if is_unicode(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


# A member's place as (parent's place, key or index), None at the root: the walk builds no
# path strings, only the places of what it reports are written out.
_Place = tuple[Any, str | int] | None


def _path(root: str, place: _Place) -> str:
    parts: list[str | int] = []
    while place is not None:
        place, part = place
        parts.append(part)
    out = root
    for part in reversed(parts):
        if isinstance(part, int):
            out += f"[{part}]"
        else:  # a name that cannot be encoded must not break the message that names it
            out = f"{out}.{printable(part)}" if out else printable(part)
    return out


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


@dataclass(frozen=True)
class _BadName:
    """Stands in a walk for a member whose name is refused, so problems keep document order."""

    rule: str


def problems(value: Any, path: str = "") -> list[Problem]:
    """Every value in ``value`` that JSON cannot carry faithfully, at most `MAX_PROBLEMS`.

    Walks dicts, lists and tuples without recursion, so hostile nesting cannot raise
    ``RecursionError``; a container deeper than `MAX_NESTING` is reported once, at its path,
    and not entered. Field paths start at ``path``. Never raises.
    """
    found: list[Problem] = []
    stack: list[tuple[Any, _Place, int]] = [(value, None, 1)]
    while stack and len(found) < MAX_PROBLEMS:
        current, place, depth = stack.pop()
        if isinstance(current, dict | list | tuple) and depth > MAX_NESTING:
            found.append(Problem(_path(path, place), TOO_DEEP))
        elif isinstance(current, dict):
            members: list[tuple[Any, _Place, int]] = []
            for key, child in current.items():
                if not isinstance(key, str):
                    members.append((_BadName(KEY_NOT_TEXT), place, depth))
                elif not is_unicode(key):
                    members.append((_BadName(KEY_NOT_UNICODE), (place, key), depth))
                else:
                    members.append((child, (place, key), depth + 1))
            stack.extend(reversed(members))
        elif isinstance(current, list | tuple):
            stack.extend(reversed([(child, (place, i), depth + 1) for i, child in enumerate(current)]))
        elif isinstance(current, _BadName):
            found.append(Problem(_path(path, place), current.rule))
        elif rule := _scalar_rule(current):
            found.append(Problem(_path(path, place), rule))
    return found


def _read_int(literal: str) -> int:
    # A JSON integer of more digits than MAX_NUMBER has is past it whatever its value; reading
    # it as one just past the bound spares int() the literals it refuses (over 4,300 digits).
    if len(literal.lstrip("-")) > len(str(MAX_NUMBER)):
        return -(MAX_NUMBER + 1) if literal.startswith("-") else MAX_NUMBER + 1
    return int(literal)


def _cut_deep(text: str, keep: int) -> str:
    """``text`` with every value nested deeper than ``keep`` levels replaced by ``null``.

    Raises ``ValueError`` when a value opened past ``keep`` levels is never closed.
    """
    pieces: list[str] = []
    depth, start, cut_from = 0, 0, -1
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth == keep + 1:
                pieces.append(text[start:i])
                cut_from = i
        elif ch in "]}":
            if depth == keep + 1 and cut_from >= 0:
                pieces.append("null")
                start, cut_from = i + 1, -1
            depth -= 1
    if cut_from >= 0:
        raise ValueError("unbalanced brackets: not JSON")
    pieces.append(text[start:])
    return "".join(pieces)


def loads(text: str | bytes | bytearray) -> Any:
    """Parse JSON text as ``json.loads`` does, except where that would fail on one hostile value.

    An integer literal with more digits than `MAX_NUMBER` (which Python's ``int()`` refuses
    past 4,300 digits) becomes one just past `MAX_NUMBER`, and values nested past
    `LOADS_NESTING` levels (where the parser would raise ``RecursionError``) become ``null``;
    both sit in places `problems` refuses anyway (out of bounds, nested past `MAX_NESTING`), so
    the verdict is the same while the rest of a batch stays readable. NaN and Infinity are
    read, to be refused by path. Raises ``ValueError`` for text that is not JSON
    (``UnicodeDecodeError`` for bytes in no JSON encoding).
    """
    if isinstance(text, bytes | bytearray):
        text = text.decode(json.detect_encoding(text))
    try:
        return json.loads(text, parse_int=_read_int)
    except RecursionError:
        return json.loads(_cut_deep(text, LOADS_NESTING), parse_int=_read_int)
