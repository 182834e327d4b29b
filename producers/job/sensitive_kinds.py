"""What sensitive data looks like: card numbers, SSNs, telling names, operator patterns.

Pure functions on one string or one name; `producers.job.sensitive` decides which strings of a
job to hand them. Nothing here raises on any input, except `compile_patterns`, which raises
`ValueError` for a pattern that is not a valid regular expression (at settings load).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

from producers.errors import ConfigurationError

#: Compiled operator patterns (``ATTENTIVE_SENSITIVE_PATTERNS``): (name, pattern) pairs.
Patterns = tuple[tuple[str, re.Pattern[str]], ...]

# One pass over the text finds every run of at least 9 digits, groups joined by a single
# separator (space run, dot or dash). Shorter numbers (dates, prices, zip codes) never match,
# so most strings cost one C-level scan and no Python work.
_NUMBER = re.compile(r"(?<!\d)\d(?:(?: +|[.-])?\d){8,}")
_SPLIT = re.compile(r"( +|[.-])")


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
    # Prefixes compared as equal-length digit strings (same order as numbers, no int()):
    # this runs for every long digit run in every job.
    n, two, three, four = len(digits), digits[:2], digits[:3], digits[:4]
    if n < 13:
        return None
    if digits[0] == "4" and n in (13, 16, 19):
        return "visa"
    if ("51" <= two <= "55" or "2221" <= four <= "2720") and n == 16:
        return "mastercard"
    if two in ("34", "37") and n == 15:
        return "amex"
    if (four == "6011" or two == "65" or "644" <= three <= "649") and 16 <= n <= 19:
        return "discover"
    if "3528" <= four <= "3589" and 16 <= n <= 19:
        return "jcb"
    if (two in ("36", "38") or "300" <= three <= "305") and 14 <= n <= 16:
        return "diners"
    if two == "62" and 16 <= n <= 19:
        return "unionpay"
    return None


def is_card(digits: str) -> bool:
    # Network ranges as well as Luhn: one random number in ten passes Luhn alone.
    return 13 <= len(digits) <= 19 and card_network(digits) is not None and luhn_ok(digits)


def _grouped_card(groups: list[str], *, identifier: bool) -> bool:
    # Every run of whole groups is a candidate, so "4111 1111 1111 1111 12 27" (a card then
    # its expiry) is found. Cards are printed 4-4-4-4(-3), 4-6-5 or 4-6-4: a run of several
    # groups must start with four digits, and only its last group may be shorter (three),
    # or two spaced phone numbers ("415 555 2671 415 555 2672") would pass for a card.
    # In an identifier a lone group is the id's own digits, not a card.
    for i, first in enumerate(groups):
        if not identifier and is_card(first):
            return True
        if len(first) != 4 or first[0] not in "23456":  # every network's numbers start 2-6
            continue
        digits = first
        for group in groups[i + 1 : i + 5]:  # 19 digits at most: five groups, the first included
            if len(group) < 3:
                break
            digits += group
            if len(digits) > 19:
                break
            if is_card(digits):
                return True
            if len(group) < 4:  # a 3-digit group only ever ends a card (4-4-4-4-3)
                break
    return False


def _ssn(groups: list[str], seps: list[str]) -> bool:
    # 3-2-4 digits with the same kind of separator twice (123-45-6789, 123.45.6789,
    # 123 45 6789), in the ranges the SSA issues. A spaced one must stand alone, or it is a
    # fragment of a longer spaced number; a dashed or dotted one may sit among spaced text.
    for i in range(len(groups) - 2):
        a, b, c = groups[i : i + 3]
        kind = seps[i][0]
        if (len(a), len(b), len(c)) != (3, 2, 4) or seps[i + 1][0] != kind:
            continue
        before = seps[i - 1][0] if i else None
        after = seps[i + 2][0] if i + 2 < len(seps) else None
        if any(s is not None and (s != " " or kind == " ") for s in (before, after)):
            continue
        if a not in ("000", "666") and a[0] != "9" and b != "00" and c != "0000":
            return True
    return False


def kind_of(text: str, extra: Patterns = (), *, identifier: bool = False) -> str | None:
    """The kind of sensitive data ``text`` holds (``payment_card``, ``us_ssn`` or an
    operator pattern's name), or None.

    ``identifier``: ``text`` is an id Attentive defines (orderId, productId, ...), whose own
    digits may be card-shaped: a bare run of digits there is not taken for a card.
    """
    for match in _NUMBER.finditer(text):
        run = match.group()
        if run.isdigit():
            if not identifier and is_card(run):
                return "payment_card"
            continue
        parts = _SPLIT.split(run)
        groups, seps = parts[0::2], parts[1::2]
        if _grouped_card(groups, identifier=identifier):
            return "payment_card"
        if _ssn(groups, seps):
            return "us_ssn"
    for name, rx in extra:
        if rx.search(text):
            return name
    return None


def kind_of_number(value: int, extra: Patterns = (), *, identifier: bool = False) -> str | None:
    """`kind_of` for a JSON integer (written without separators)."""
    digits = str(abs(value))
    if not identifier and is_card(digits):
        return "payment_card"
    return kind_of(digits, extra, identifier=True) if extra else None


_NUM = r"(?:_?(?:number|num|no|nr))?"
_NUM_ID = r"(?:_?(?:number|num|no|nr|id))?"
_NAME_KINDS = (
    ("us_ssn", re.compile(rf"_(?:ssn|social_?security{_NUM})_")),
    (
        "payment_card",
        re.compile(
            rf"_(?:(?:credit|debit)_?card{_NUM}|card_?(?:number|num|no|nr)|cc_?(?:number|num|no|nr)|ccn|pan_?number)_"
        ),
    ),
    ("card_security_code", re.compile(r"_(?:cvv|cvc|cvv_?2|cvc_?2|card_?(?:security|verification)_?(?:code|value))_")),
    ("bank_account", re.compile(rf"_(?:bank_?account{_NUM}|routing_?(?:number|num|no)|iban)_")),
    ("passport", re.compile(rf"_passport{_NUM_ID}_")),
    ("drivers_license", re.compile(rf"_drivers?_?licen[cs]e{_NUM_ID}_")),
)
_IDENTIFIERS = frozenset({"_order_id_", "_product_id_", "_product_variant_id_", "_external_event_id_"})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[A-Za-z])(?=[0-9])")
_NOT_WORD = re.compile(r"[^a-z0-9]+")


def words(name: str) -> str:
    """``name`` as lowercase words between underscores: ``creditCardNumber`` and
    ``credit-card number`` both give ``_credit_card_number_``."""
    return "_" + _NOT_WORD.sub("_", _CAMEL.sub("_", name).lower()).strip("_") + "_"


def name_kind(name: str) -> str | None:
    """The kind of sensitive data a field called ``name`` announces, or None."""
    w = words(name)
    for kind, rx in _NAME_KINDS:
        if rx.search(w):
            return kind
    return None


def is_identifier_name(name: str) -> bool:
    """Whether ``name`` is one of Attentive's own ids (orderId, order_id, productVariantId, ...)."""
    return words(name) in _IDENTIFIERS


def compile_patterns(patterns: Mapping[str, str]) -> Patterns:
    """The operator's patterns compiled, once per distinct set (cached).

    Raises `ConfigurationError` naming the setting and the first bad pattern by its name
    (never its text).
    """
    return _compile(tuple(sorted(patterns.items())))


@lru_cache(maxsize=8)
def _compile(items: tuple[tuple[str, str], ...]) -> Patterns:
    out = []
    for name, rx in items:
        try:
            out.append((name, re.compile(rx)))
        except (re.error, TypeError, ValueError, RecursionError, OverflowError) as err:
            detail = err.msg if isinstance(err, re.error) else type(err).__name__
            raise ConfigurationError(
                f"ATTENTIVE_SENSITIVE_PATTERNS: pattern {name!r} is not a valid regular expression ({detail})"
            ) from None
    return tuple(out)
