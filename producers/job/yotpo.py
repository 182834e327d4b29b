"""The ``yotpo_custom_event`` job: Yotpo SMS & Email's "create or update custom customer event".

Field names are Yotpo's own (snake_case), like the Attentive kinds use Attentive's::

    {"kind": "yotpo_custom_event", "source": "attentive_relay", "type": "order_shipped",
     "occurred_at": "2026-01-31T09:30:00Z", "event_id": "0b9c...-...",
     "customer": {"external_id": "u-1", "phone_number": "+14155552671", "email": "...",
                  "properties": {"tier": "gold"}},
     "properties": {"carrier": "UPS"}, "account": "brand-a"}

Rules (checked at enqueue and again before each attempt, like every kind's):

- ``source`` and ``type``: snake_case, 1 to 255 characters: lower-case letters and digits in
  words joined by single underscores (`SNAKE_CASE`, ``^[a-z0-9]+(_[a-z0-9]+)*$``);
- ``occurred_at``: ISO 8601 with a UTC offset (the RFC 3339 profile, as the Attentive kinds);
  stamped with the time of enqueue when missing;
- ``event_id``: a UUID; a random one is assigned at enqueue when missing and kept from then on,
  so a retry overwrites the event rather than adding a second one (Yotpo upserts by id);
- ``customer``: identified by ``external_id``, or else by exactly one of ``phone_number``
  (normalized to E.164) or ``email``: never both without an ``external_id``;
- ``customer.properties``: flat primitive values (string, boolean, integer, number; no null,
  array or object), names non-empty and without spaces (Yotpo asks for underscores);
- ``properties`` (the event's): flat primitive values, no null.

Yotpo events have no freshness window: `producers.job.freshness` and the Attentive ``occurredAt``
rules do not apply (the model has no ``occurredAt``).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BeforeValidator, StringConstraints, model_validator

from producers.job import rules
from producers.job.models import Email, Identifier, OccurredAt, Phone, _Job, _Model

KIND: Final = "yotpo_custom_event"
SNAKE_CASE = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")
MAX_NAME = 255


def _snake(value: str) -> str:
    if not SNAKE_CASE.match(value):
        raise ValueError(
            "must be snake_case: lower-case letters and digits, words joined by single underscores "
            "(^[a-z0-9]+(_[a-z0-9]+)*$)"
        )
    return value


def _uuid(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str) and len(value) <= 45:
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise ValueError("must be a UUID, e.g. 0b9c8a2e-5f1d-4c3b-9a7e-2d4f6b8c0e1a")


def _required_time(value: Any) -> Any:
    if value is None:
        raise ValueError("is required (ISO 8601 with a UTC offset)")
    return value


def _primitives(value: dict[str, Any], *, no_spaces: bool) -> dict[str, Any]:
    if len(value) > rules.MAX_PROPERTIES:
        raise ValueError(f"at most {rules.MAX_PROPERTIES} properties")
    if any(not k for k in value):
        raise ValueError("property names must not be empty")
    if no_spaces:
        spaced = sorted(k for k in value if any(c.isspace() for c in k))
        if spaced:
            raise ValueError("property names must not contain spaces (use underscores): " + ", ".join(spaced[:20]))
    bad = sorted(k for k, v in value.items() if not isinstance(v, str | bool | int | float))
    if bad:
        raise ValueError(
            "values must be a string, boolean, integer or number (no null, array or object): " + ", ".join(bad[:20])
        )
    return value


Snake = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME), AfterValidator(_snake)]
EventId = Annotated[uuid.UUID, BeforeValidator(_uuid)]
OccurredAtRequired = Annotated[OccurredAt, AfterValidator(_required_time)]
CustomerProperties = Annotated[dict[str, Any], AfterValidator(lambda v: _primitives(v, no_spaces=True))]
EventProperties = Annotated[dict[str, Any], AfterValidator(lambda v: _primitives(v, no_spaces=False))]


class YotpoCustomer(_Model):
    external_id: Identifier = None
    phone_number: Phone = None
    email: Email = None
    properties: CustomerProperties | None = None

    @model_validator(mode="after")
    def _identified(self) -> YotpoCustomer:
        if self.external_id:
            return self
        if self.phone_number and self.email:
            raise ValueError("without external_id, give exactly one of phone_number or email, not both")
        if not (self.phone_number or self.email):
            raise ValueError("needs external_id, or else exactly one of phone_number or email")
        return self


class YotpoCustomEvent(_Job):
    kind: Literal["yotpo_custom_event"] = KIND
    source: Snake
    type: Snake
    occurred_at: OccurredAtRequired
    event_id: EventId
    customer: YotpoCustomer
    properties: EventProperties | None = None


def stamp(raw: dict[str, Any], now: datetime) -> dict[str, Any]:
    """``raw`` with ``occurred_at`` (``now``) and ``event_id`` (a random UUID) filled in where
    missing or blank: what enqueue adds, so every attempt sends the same event id."""
    out = dict(raw)
    for field, value in (("occurred_at", now.isoformat()), ("event_id", str(uuid.uuid4()))):
        current = out.get(field)
        if current is None or (isinstance(current, str) and not current.strip()):
            out[field] = value
    return out


def yotpo_body(job: YotpoCustomEvent) -> dict[str, Any]:
    """The JSON body of the Yotpo call: the job without ``kind``, ``account`` and nulls."""
    return job.model_dump(mode="json", exclude_none=True, exclude={"kind", "account"})
