"""The sensitive-data guard: Attentive's terms forbid sensitive personal information.

Attentive may not receive sensitive or special categories of personal information (as the
CCPA/CPRA define them) in events or attributes. On by default (``ATTENTIVE_SENSITIVE_GUARD``),
`scan_job` refuses a job when any string it carries looks like such data: the event
``type``, every property and attribute name and value at every depth, every item field,
``orderId``, ``salesChannel``, ``externalEventId``, the email, ``clientUserId``,
``shopifyId``, ``klaviyoId`` and custom identifiers' names and values. Only the phone and
Yotpo's ``phone_number`` (parsed and normalized as phone numbers), ``kind``, ``occurredAt``,
prices and quantities are skipped (Yotpo's ``event_id`` is a UUID value, not a string).
What counts (see `producers.job.sensitive_kinds`):

- ``payment_card``: 13 to 19 digits, grouped or not by space runs, dots or dashes, in a card
  network's range and length, passing Luhn. In Attentive's own ids (``orderId``,
  ``productId``, ``productVariantId``, ``externalEventId``, also as property names in any
  case style) a bare digit run or a UUID is the id itself and is not taken for a card; a
  grouped card number there still is. In customer ids (``clientUserId``, ``shopifyId``,
  ``klaviyoId``, Yotpo's ``external_id``) a bare run of at most 14 digits is an id (Shopify's
  are 13); longer runs that pass as cards are refused.
- ``us_ssn``: 123-45-6789, 123.45.6789 or 123 45 6789 in the ranges the SSA issues
  (unformatted nine-digit numbers are too often order numbers to refuse by value);
- an operator pattern from ``ATTENTIVE_SENSITIVE_PATTERNS`` (name -> regex), by its name;
- a *name* announcing such data (ssn, socialSecurityNumber, cc_number, creditCardNumber,
  cvv, bank_account, passport_number, ...) judged together with its value: refused when the
  value holds data, i.e. a number or a string with a digit, at any depth beneath it. A
  boolean, null, empty or digitless value (``ssn_verified: true``, ``credit_card_type:
  "visa"``, ``ssn: "n/a"``) is not sensitive data: none of these kinds is written without
  digits.

Problems name the field path and the kind of data, never the value. A property name that
itself looks like sensitive data is reported at its parent's path, so the path never holds it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from producers.errors import Problem
from producers.job.models import CustomIdentifier, IdentityIdentifier
from producers.job.sensitive_kinds import (
    Patterns,
    card_network,
    compile_patterns,
    is_identifier_name,
    kind_of,
    kind_of_number,
    luhn_ok,
    name_kind,
)

__all__ = ["card_network", "compile_patterns", "kind_of", "luhn_ok", "scan", "scan_job"]

_FORBID = "which Attentive's terms forbid"
_SKIP = frozenset({"kind", "occurredAt", "phone", "phone_number", "price", "quantity"})
_ID_FIELDS = frozenset({"orderId", "productId", "productVariantId", "externalEventId"})
# Customer ids: Shopify's are bare 13-digit runs, and about 1 in 10 of those that start with 4
# pass Luhn in Visa's range (13-digit Visa numbers are no longer issued). Runs of 15 digits
# and more (American Express, and the 16-digit cards everyone carries) are still refused there.
_CUSTOMER_ID_FIELDS = frozenset({"clientUserId", "shopifyId", "klaviyoId", "external_id"})
_CUSTOMER_ID_DIGITS = 14
_DIGIT = re.compile(r"\d")
# Segment's messageId (our custom events' externalEventId) is a UUID; its dash-separated digit
# groups can line up as a printed card number (about 1 in 2,500), so a UUID in an id is an id.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def scan_job(job: BaseModel, extra: Mapping[str, str] | None = None) -> list[Problem]:
    """Problems for every string of a validated job that looks sensitive, [] when none.

    ``extra`` is ``ATTENTIVE_SENSITIVE_PATTERNS`` (compiled once, cached). Raises nothing
    for any job; a bad ``extra`` pattern raises `ConfigurationError` (settings load has
    already refused one).
    """
    problems: list[Problem] = []
    _model(job, "", compile_patterns(extra) if extra else (), problems)
    return problems


def scan(properties: Mapping[str, Any] | None, extra: Mapping[str, str] | None = None) -> list[Problem]:
    """`scan_job` for a ``properties`` object alone (paths start ``properties.``)."""
    problems: list[Problem] = []
    if properties:
        _properties(properties, "properties", compile_patterns(extra) if extra else (), problems)
    return problems


def _model(model: BaseModel, path: str, patterns: Patterns, problems: list[Problem]) -> None:
    if isinstance(model, CustomIdentifier | IdentityIdentifier):
        _named_value(model.name, model.value, path, patterns, problems)
        return
    for field, value in model.__dict__.items():  # the fields alone (models forbid extras); faster than iter()
        if value is None or field in _SKIP:
            continue
        where = f"{path}.{field}" if path else field
        if field == "properties" and isinstance(value, Mapping):
            _properties(value, where, patterns, problems)
        elif isinstance(value, str):
            identifier = field in _ID_FIELDS or (
                field in _CUSTOMER_ID_FIELDS and value.isdigit() and len(value) <= _CUSTOMER_ID_DIGITS
            )
            if not (identifier and _UUID.fullmatch(value)):
                _value(value, where, patterns, problems, identifier)
        elif isinstance(value, BaseModel):
            _model(value, where, patterns, problems)
        elif isinstance(value, tuple):
            for i, member in enumerate(value):
                if isinstance(member, BaseModel):
                    _model(member, f"{where}[{i}]", patterns, problems)


def _named_value(name: str, value: str, path: str, patterns: Patterns, problems: list[Problem]) -> None:
    """A custom identifier: its name and value are checked as text, and judged together."""
    before = len(problems)
    _value(name, f"{path}.name", patterns, problems, False)
    _value(value, f"{path}.value", patterns, problems, False)
    announced = name_kind(name)
    if announced and len(problems) == before and _holds_data(value):
        problems.append(
            Problem(path, f"its name announces sensitive data ({announced}) and it holds a value, {_FORBID}")
        )


def _properties(props: Mapping[Any, Any], path: str, patterns: Patterns, problems: list[Problem]) -> None:
    for key, value in props.items():
        name = str(key)
        found, announced, identifier = _key(name, patterns)
        if found:
            # Reported at the parent: the name itself is the data, so no path may hold it.
            problems.append(Problem(path, f"a property name looks like sensitive data ({found}), {_FORBID}"))
            continue
        where = f"{path}.{name}"
        if announced and _holds_data(value):
            problems.append(
                Problem(where, f"its name announces sensitive data ({announced}) and it holds a value, {_FORBID}")
            )
            continue
        _value(value, where, patterns, problems, identifier)


_KEYS: dict[tuple[str, Patterns], tuple[None, str | None, bool]] = {}


def _key(name: str, patterns: Patterns) -> tuple[str | None, str | None, bool]:
    """(kind of data the name holds, kind it announces, whether it is an Attentive id)."""
    # Jobs reuse a handful of property names: judging each once saves most of the guard's
    # time. A name that holds sensitive data is never kept, and the cache stays bounded.
    known = _KEYS.get((name, patterns))
    if known is not None:
        return known
    found = kind_of(name, patterns)
    if found:
        return found, None, False
    if len(_KEYS) >= 4096:
        _KEYS.clear()
    info = _KEYS[(name, patterns)] = (None, name_kind(name), is_identifier_name(name))
    return info


def _value(value: Any, where: str, patterns: Patterns, problems: list[Problem], identifier: bool) -> None:
    if isinstance(value, str):
        found = kind_of(value, patterns, identifier=identifier)
    elif isinstance(value, int) and not isinstance(value, bool):
        found = kind_of_number(value, patterns, identifier=identifier)
    elif isinstance(value, Mapping):
        _properties(value, where, patterns, problems)
        return
    elif isinstance(value, list | tuple):
        for i, member in enumerate(value):
            _value(member, f"{where}[{i}]", patterns, problems, identifier)
        return
    else:
        return
    if found:
        problems.append(Problem(where, f"looks like sensitive data ({found}), {_FORBID}"))


def _holds_data(value: Any) -> bool:
    """Whether a value under a telling name is data: a number, or a string with a digit."""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, str):
        return _DIGIT.search(value) is not None
    if isinstance(value, Mapping):
        return any(_holds_data(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_data(v) for v in value)
    return False
