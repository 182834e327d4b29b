"""Attentive's rules for identifiers, names and sizes, as plain functions.

Each check raises ``ValueError`` with a message that states the rule and never echoes the
value (values are personal data). The pydantic models in `producers.job.models` call these; the
sandbox applies the same models, so the rules live here once.
"""

from __future__ import annotations

import re
from typing import Any

#: Characters Attentive forbids in a custom event ``type``.
EVENT_TYPE_FORBIDDEN = "\"'(){}[]\\|,"
#: Characters forbidden in custom event property keys: the union of the REST reference's list
#: (" { } [ ] \ |) and the older GraphQL page's (' " { } [ ] \ ,).
PROPERTY_KEY_FORBIDDEN = "'\"{}[]\\,|"

MAX_IDENTITY_VALUE = 100
MAX_ATTRIBUTE_NAME = 200
#: Attentive keeps more keys, but Journeys see only this many per event type.
JOURNEY_KEY_LIMIT = 200
MAX_TEXT = 1024
MAX_EVENT_TYPE = 255
MAX_EMAIL = 254
MAX_PROPERTIES = 1000
MAX_DEPTH = 16
#: A serialized job larger than this is refused: nothing legitimate comes close.
MAX_JOB_BYTES = 64 * 1024

_EMAIL = re.compile(r"^[^@\s\"<>,;]+@[^@\s\"<>,;]+\.[^@\s\"<>,;.]+$")


def forbidden_chars(text: str, forbidden: str) -> str:
    """The forbidden characters that occur in ``text``, in the order of ``forbidden``."""
    return "".join(c for c in forbidden if c in text)


def check_event_type(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    bad = forbidden_chars(value, EVENT_TYPE_FORBIDDEN)
    if bad:
        raise ValueError(f"must not contain any of {EVENT_TYPE_FORBIDDEN}; found {bad}")
    return value


def check_property_key(key: str) -> None:
    if not key:
        raise ValueError("property names must not be empty")
    bad = forbidden_chars(key, PROPERTY_KEY_FORBIDDEN)
    if bad:
        raise ValueError(f"property names must not contain any of {PROPERTY_KEY_FORBIDDEN}; found {bad}")


def json_depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a JSON value, stopping once ``limit`` is passed (hostile input)."""
    depth, level = 0, [value]
    while level and depth <= limit:
        depth += 1
        nxt: list[Any] = []
        for v in level:
            if isinstance(v, dict):
                nxt.extend(v.values())
            elif isinstance(v, list | tuple):
                nxt.extend(v)
        level = nxt
    return depth


def normalize_phone(raw: str, region: str) -> str:
    """E.164 form of a phone number written in any common format.

    Numbers without a ``+country`` prefix are read in ``region`` (ISO 3166 alpha-2).
    """
    import phonenumbers  # imported on first use: its metadata is large

    try:
        number = phonenumbers.parse(raw, region.upper())
    except phonenumbers.NumberParseException:
        raise ValueError("not a phone number that can be written in E.164") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number for its country (E.164 needed)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def check_email(raw: str) -> str:
    value = raw.strip()
    if len(value) > MAX_EMAIL or not _EMAIL.match(value):
        raise ValueError("not a valid email address")
    return value
