"""The sensitive-data guard: Attentive's terms forbid sensitive personal information.

Attentive may not receive sensitive or special categories of personal information (as the
CCPA/CPRA define them) in events or attributes. On by default (``ATTENTIVE_SENSITIVE_GUARD``),
this refuses a job whose property values look like such data, naming the property and the kind
of data, never the value. It checks every string and integer inside ``properties``, at every
nesting level, for:

- ``payment_card``: 13 to 19 digits, optionally grouped by spaces or dashes, in a card
  network's number range and length (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay),
  passing the Luhn check;
- ``us_ssn``: a US social security number written 123-45-6789 or 123 45 6789 (unformatted
  nine-digit numbers are too often order numbers to refuse);
- property *names* that announce such data (ssn, social_security, card_number, cvv, ...).

Extend it with ``ATTENTIVE_SENSITIVE_PATTERNS``, a JSON object of name -> regular expression,
e.g. ``{"passport": "\\\\b[A-Z][0-9]{8}\\\\b"}``; a value matching any of them is refused under
that name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

from producers.errors import Problem

_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])")
_SENSITIVE_NAMES = re.compile(
    r"(^|[_\s.-])(ssn|social[_\s-]?security|card[_\s-]?(number|num|no)|credit[_\s-]?card|cvv|cvc|"
    r"bank[_\s-]?account|routing[_\s-]?number|passport[_\s-]?(number|no))($|[_\s.-])",
    re.IGNORECASE,
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_network(digits: str) -> str | None:
    """The card network whose number ranges and lengths ``digits`` fits, if any."""
    n, two, four = len(digits), int(digits[:2]), int(digits[:4])
    if digits[0] == "4" and n in (13, 16, 19):
        return "visa"
    if (51 <= two <= 55 or 2221 <= four <= 2720) and n == 16:
        return "mastercard"
    if two in (34, 37) and n == 15:
        return "amex"
    if (four == 6011 or two == 65 or 644 <= int(digits[:3]) <= 649) and 16 <= n <= 19:
        return "discover"
    if 3528 <= four <= 3589 and 16 <= n <= 19:
        return "jcb"
    if (two in (36, 38) or 300 <= int(digits[:3]) <= 305) and 14 <= n <= 16:
        return "diners"
    if two == 62 and 16 <= n <= 19:
        return "unionpay"
    return None


def _card(text: str) -> bool:
    # Network ranges as well as Luhn: one random number in ten passes Luhn alone, and shops
    # have long numeric order ids.
    for match in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", match.group())
        if 13 <= len(digits) <= 19 and card_network(digits) and luhn_ok(digits):
            return True
    return False


@lru_cache(maxsize=8)
def _extra(patterns: tuple[tuple[str, str], ...]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple((name, re.compile(rx)) for name, rx in patterns)


def kind_of(value: str, extra: tuple[tuple[str, str], ...] = ()) -> str | None:
    """The kind of sensitive data ``value`` looks like, or None."""
    if _card(value):
        return "payment_card"
    if _SSN.search(value):
        return "us_ssn"
    for name, rx in _extra(extra):
        if rx.search(value):
            return name
    return None


def _walk(value: Any, path: str) -> Iterator[tuple[str, str | None, Any]]:
    """(field path, property name or None for a list element, value) for everything nested."""
    if isinstance(value, Mapping):
        items: Iterator[tuple[str, str | None, Any]] = ((f"{path}.{k}", str(k), v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{path}[{i}]", None, v) for i, v in enumerate(value))
    else:
        return
    for field, name, v in items:
        yield field, name, v
        yield from _walk(v, field)


def scan(properties: Mapping[str, Any] | None, extra: Mapping[str, str] | None = None) -> list[Problem]:
    """Problems for every property that looks sensitive. Messages name the field, not the value."""
    if not properties:
        return []
    patterns = tuple(sorted((extra or {}).items()))
    problems = []
    for field, name, value in _walk(properties, "properties"):
        if name is not None and _SENSITIVE_NAMES.search(name):
            problems.append(Problem(field, "its name announces sensitive data, which Attentive's terms forbid"))
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            continue
        found = kind_of(str(value), patterns)
        if found:
            problems.append(Problem(field, f"looks like sensitive data ({found}), which Attentive's terms forbid"))
    return problems
