"""Segment track messages to Yotpo custom events: the fan-out behind ATTENTIVE_SEGMENT_TO_YOTPO.

Off by default. When ``ATTENTIVE_SEGMENT_TO_YOTPO`` is true, `Producer.prepare_segment` adds
one ``yotpo_custom_event`` job (`producers.job.yotpo`) to the Attentive jobs of every Segment
``track`` message (pages and identifies make none), for the same account and queued with
them, all or nothing. The mapping:

- ``source``: YOTPO_SOURCE (default ``attentive_relay``).
- ``type``: ``event`` in snake_case: accents folded to ASCII, ``camelCase`` split, every run
  of other characters one ``_``, no ``_`` at either end, at most 255 characters
  (``"Order Shipped"`` -> ``order_shipped``, ``"checkoutStep 2"`` -> ``checkout_step_2``).
- ``occurred_at``: the first of timestamp, originalTimestamp, sentAt (as for Attentive); else
  the time of enqueue.
- ``event_id``: ``uuid5(NAMESPACE, messageId)``, so the same message resent overwrites its
  event; without a messageId, a random UUID at enqueue.
- ``customer.external_id``: userId, as for Attentive's clientUserId (a userId that is an
  email or a phone number is not an id). With an external id, ``phone_number`` and ``email``
  come along from traits.phone and traits.email when present; without one, exactly one of
  them, the phone preferred (Yotpo refuses both without an external id).
- ``properties``: the message's ``properties`` flattened to primitive values: nested keys
  joined with ``_`` (``{"a": {"b": 1}}`` -> ``a_b``, ``{"p": [{"q": 2}]}`` -> ``p_0_q``),
  whitespace in names replaced by ``_``, nulls and empty names left out, the first value kept
  when two names flatten alike.

A track message with no identifier makes no Yotpo job (it makes no Attentive job either). An
``event`` with no letter or digit to make a type from is refused, naming ``event``, with the
whole message (the Attentive jobs share its fate).
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from typing import Any

from producers.errors import InvalidJob, Problem
from producers.job.yotpo import KIND, MAX_NAME
from producers.segment import mapping as segment

NAMESPACE = uuid.UUID("5b0c6d1e-3f4a-5b6c-8d7e-9f0a1b2c3d4e")
"""The uuid5 namespace of event ids derived from Segment messageIds (fixed: changing it would
turn every resent message into a new event)."""

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_OTHER = re.compile(r"[^a-z0-9]+")


def snake_case(name: str) -> str:
    """``name`` as Yotpo's snake_case (see the list above); '' when nothing is left."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return _OTHER.sub("_", _CAMEL.sub("_", ascii_name).lower()).strip("_")[:MAX_NAME].rstrip("_")


def flatten(value: Any, prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Nested objects and arrays as one level of primitive values (see the list above)."""
    out = {} if out is None else out
    if isinstance(value, dict):
        children: Any = value.items()
    elif isinstance(value, list):
        children = enumerate(value)
    else:
        if prefix and value is not None:
            out.setdefault(prefix, value)
        return out
    for key, child in children:
        name = re.sub(r"\s+", "_", str(key).strip())
        if name:
            flatten(child, f"{prefix}_{name}" if prefix else name, out)
    return out


def event_id(message_id: Any) -> str | None:
    """The event id a messageId always maps to, None without one."""
    if isinstance(message_id, str) and message_id.strip():
        return str(uuid.uuid5(NAMESPACE, message_id))
    return None


def customer_of(message: dict[str, Any], region: str) -> dict[str, Any]:
    user = segment.user_of(message, region=region)
    external_id = user.get("externalIdentifiers", {}).get("clientUserId")
    if external_id:
        customer = {"external_id": external_id}
        customer.update({f: user[k] for k, f in (("phone", "phone_number"), ("email", "email")) if k in user})
        return customer
    if "phone" in user:
        return {"phone_number": user["phone"]}
    if "email" in user:
        return {"email": user["email"]}
    return {}


def to_job(message: Any, *, source: str, region: str) -> dict[str, Any] | None:
    """The Yotpo job a Segment message also makes, or None (not a track, or no identifier).

    Call it after `segment.to_jobs` accepted the message (it has checked the message's values).
    Raises `InvalidJob` naming ``event`` when the event name has nothing to make a type from.
    """
    if not isinstance(message, dict) or message.get("type") != "track":
        return None
    customer = customer_of(message, region)
    if not customer:
        return None
    event = message.get("event")
    type_ = snake_case(event) if isinstance(event, str) else ""
    if not type_:
        raise InvalidJob([Problem("event", "has no letter or digit to make a Yotpo event type from")])
    job: dict[str, Any] = {"kind": KIND, "source": source, "type": type_, "customer": customer}
    when = segment.occurred_at(message)
    if when:
        job["occurred_at"] = when
    derived = event_id(message.get("messageId"))
    if derived:
        job["event_id"] = derived
    props = message.get("properties")
    flat = flatten(props) if isinstance(props, dict) else {}
    if flat:
        job["properties"] = flat
    return job
