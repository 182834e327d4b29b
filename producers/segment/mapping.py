"""Segment-spec messages (track, page, identify) to Attentive jobs.

The mapping, field by field, is specified once, in docs/segment-and-collector.md ("The
mapping"); the tests check it a row at a time. `to_jobs` returns a message's jobs, or a `Skip`
with the reason (``unsupported_type``, ``no_identifier``, ``nothing_to_send``); it raises
`InvalidJob` naming Segment fields, and nothing else. A messageId over `MAX_EVENT_ID` (128)
characters becomes `external_event_id`'s uuid5, the same on every resend.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from producers.errors import InvalidJob, Problem
from producers.job import jsonvalues, rules
from producers.settings import Settings

CHECKOUT_KEYS = (
    "affiliation",
    "coupon",
    "currency",
    "products",
    "discount",
    "order_id",
    "revenue",
    "shipping",
    "tax",
    "value",
)
ORDER_KEYS = (
    "affiliation",
    "coupon",
    "currency",
    "discount",
    "order_id",
    "products",
    "revenue",
    "shipping",
    "tax",
    "total",
)
SELECTED_KEYS: dict[str, tuple[str, ...]] = {
    "Checkout Started": CHECKOUT_KEYS,
    "Order Updated": ORDER_KEYS,
    "Order Refunded": (*ORDER_KEYS, "checkout_id"),
    "Order Cancelled": ORDER_KEYS,
    "Cart Viewed": ("cart_id", "currency", "products"),
}
PAGE_KEYS = ("path", "referrer", "search", "title", "url", "name")
ECOMMERCE = {"Product Viewed": "product_view", "Product Added": "add_to_cart"}
IDENTIFYING_TRAITS = frozenset({"phone", "email", "username"})
_LOOKS_LIKE_PHONE = re.compile(r"^\+?[\d\s().-]{7,}$")
#: Where a phone number written without +country is read (the settings' default region).
DEFAULT_REGION: str = Settings.model_fields["attentive_default_region"].default
#: A plain decimal as Segment sources write numbers in strings: sign, ASCII digits, fraction.
_DECIMAL = re.compile(r"([+-]?)([0-9]+)(?:\.([0-9]+))?")
NOT_A_NUMBER = "must be a number or a decimal string"
MAX_EVENT_ID = 128
"""The most characters of externalEventId Attentive takes (the job model, `producers.job.models`, holds
the same limit)."""
EVENT_ID_NAMESPACE = uuid.UUID("0d6f3c52-8a41-5e27-b9c4-3f1e7a2d6b90")
"""The uuid5 namespace of externalEventIds derived from long messageIds (fixed: changing it
would make every resent long-id message a new event at Attentive)."""
OUT_OF_RANGE = f"must be a number between -{jsonvalues.MAX_NUMBER} and {jsonvalues.MAX_NUMBER}"


@dataclass(frozen=True)
class Skip:
    """A message that is not sent, and why (``no_identifier``, ``unsupported_type``, ``nothing_to_send``)."""

    reason: str


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _traits(message: dict[str, Any]) -> dict[str, Any]:
    context = message.get("context")
    merged: dict[str, Any] = {}
    if isinstance(context, dict) and isinstance(context.get("traits"), dict):
        merged.update(context["traits"])
    if isinstance(message.get("traits"), dict):
        merged.update(message["traits"])
    return merged


def _is_phone(value: str, region: str) -> bool:
    if not _LOOKS_LIKE_PHONE.match(value):
        return False
    try:
        rules.normalize_phone(value, region)
    except ValueError:
        return False
    return True


def _client_user_id(user_id: Any, region: str) -> str | None:
    value = _str(user_id) or (str(user_id) if isinstance(user_id, int) and not isinstance(user_id, bool) else None)
    if value is None or "@" in value or _is_phone(value, region):
        return None  # an email or a valid phone number is never a clientUserId
    return value


def user_of(message: dict[str, Any], *, region: str = DEFAULT_REGION) -> dict[str, Any]:
    traits = _traits(message)
    user: dict[str, Any] = {}
    if _str(traits.get("phone")):
        user["phone"] = traits["phone"]
    if _str(traits.get("email")):
        user["email"] = traits["email"]
    external: dict[str, Any] = {}
    client_user_id = _client_user_id(message.get("userId"), region)
    if client_user_id:
        external["clientUserId"] = client_user_id
    if _str(traits.get("username")):
        external["customIdentifiers"] = [{"name": "username", "value": traits["username"]}]
    if external:
        user["externalIdentifiers"] = external
    return user


def occurred_at(message: dict[str, Any]) -> str | None:
    """The first present of timestamp, originalTimestamp, sentAt, as RFC 3339 UTC."""
    for key in ("timestamp", "originalTimestamp", "sentAt"):
        raw = message.get(key)
        if raw in (None, ""):
            continue
        if not isinstance(raw, str):
            raise InvalidJob([Problem(key, "must be an ISO 8601 date-time string")])
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InvalidJob([Problem(key, "must be an ISO 8601 date-time")]) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)  # Segment's libraries send UTC
        try:
            in_utc = parsed.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+01:00 parses but has no UTC counterpart
            raise InvalidJob([Problem(key, "must fall between years 1 and 9999 in UTC")]) from None
        return in_utc.isoformat().replace("+00:00", "Z")
    return None


def _rename(value: Any) -> Any:
    if isinstance(value, dict):
        table = str.maketrans({c: "_" for c in rules.PROPERTY_KEY_FORBIDDEN})
        return {str(k).translate(table): _rename(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename(v) for v in value]
    return value


def _properties(message: dict[str, Any]) -> dict[str, Any]:
    props = message.get("properties")
    if props is None:
        return {}
    if not isinstance(props, dict):
        raise InvalidJob([Problem("properties", "must be an object")])
    return props


def _number(value: Any) -> int | float | str:
    """A JSON number or a plain decimal string as an int or a float, or the rule it breaks."""
    if isinstance(value, str):
        match = _DECIMAL.fullmatch(value.strip())
        if not match:
            return NOT_A_NUMBER
        sign, whole, fraction = match.groups()
        whole = whole.lstrip("0") or "0"
        if len(whole) > len(str(jsonvalues.MAX_NUMBER)):  # before int(), which refuses 4,300 digits
            return OUT_OF_RANGE
        value = float(f"{sign}{whole}.{fraction}") if fraction else int(sign + whole)
    elif isinstance(value, bool) or not isinstance(value, int | float):
        return NOT_A_NUMBER
    return OUT_OF_RANGE if abs(value) > jsonvalues.MAX_NUMBER else value


def _price(value: Any) -> int | float | str:
    price = _number(value)
    return "must not be negative" if not isinstance(price, str) and price < 0 else price


def _quantity(value: Any) -> int | str:
    quantity = _number(value)
    if quantity == NOT_A_NUMBER or (isinstance(quantity, float) and not quantity.is_integer()):
        return "must be a whole number"
    return quantity if isinstance(quantity, str) else int(quantity)


def _item(product: Any, path: str, event_currency: Any) -> dict[str, Any]:
    if not isinstance(product, dict):
        raise InvalidJob([Problem(path, "must be an object")])
    product_id = next((v for k in ("product_id", "id", "sku") if (v := product.get(k)) not in (None, "")), None)
    problems = []
    if product_id is None:
        problems.append(Problem(f"{path}.product_id", "is required (or id, or sku)"))
    price = None if product.get("price") is None else _price(product["price"])
    if price is None:
        problems.append(Problem(f"{path}.price", "is required"))
    elif isinstance(price, str):
        problems.append(Problem(f"{path}.price", price))
    quantity = None if product.get("quantity") is None else _quantity(product["quantity"])
    if isinstance(quantity, str):
        problems.append(Problem(f"{path}.quantity", quantity))
    if problems:
        raise InvalidJob(problems)
    currency = product.get("currency") or event_currency or "USD"
    item: dict[str, Any] = {
        "productId": str(product_id),
        "productVariantId": str(product.get("variant") or product_id),
        "price": [{"value": price, "currency": str(currency).upper()}],
    }
    for source, target in (("name", "name"), ("image_url", "productImage"), ("url", "productUrl")):
        if _str(product.get(source)):
            item[target] = product[source]
    if quantity is not None:
        item["quantity"] = quantity
    return item


def _uppercase_currency(props: dict[str, Any]) -> dict[str, Any]:
    if isinstance(props.get("currency"), str):
        return {**props, "currency": props["currency"].upper()}
    return props


def external_event_id(message_id: Any) -> str | None:
    """The externalEventId a messageId always maps to: itself when it fits in `MAX_EVENT_ID`
    characters, else its uuid5; None without one.

    A hash rather than a cut: two long ids sharing their first 128 characters (a common prefix
    and a counter at the end) must stay two events."""
    if not _str(message_id):
        return None
    return message_id if len(message_id) <= MAX_EVENT_ID else str(uuid.uuid5(EVENT_ID_NAMESPACE, message_id))


def _custom_event(
    type_: str, props: dict[str, Any], user: dict[str, Any], when: str | None, message_id: Any, rename_keys: bool
) -> dict[str, Any]:
    job: dict[str, Any] = {"kind": "custom_event", "type": type_, "user": user}
    if props:
        job["properties"] = _rename(props) if rename_keys else props
    if when:
        job["occurredAt"] = when
    event_id = external_event_id(message_id)
    if event_id:
        job["externalEventId"] = event_id
    return job


def _track(message: dict[str, Any], user: dict[str, Any], when: str | None, rename_keys: bool) -> list[dict[str, Any]]:
    event = _str(message.get("event"))
    if event is None:
        raise InvalidJob([Problem("event", "is required for track")])
    props = _properties(message)
    if event in ECOMMERCE:
        job: dict[str, Any] = {
            "kind": ECOMMERCE[event],
            "user": user,
            "items": [_item(props, "properties", props.get("currency"))],
        }
    elif event == "Order Completed":
        products = props.get("products")
        if not isinstance(products, list) or not products:
            raise InvalidJob([Problem("properties.products", "must be a non-empty array for Order Completed")])
        job = {
            "kind": "purchase",
            "user": user,
            "items": [_item(p, f"properties.products[{i}]", props.get("currency")) for i, p in enumerate(products)],
        }
        order_id = props.get("order_id")
        if isinstance(order_id, bool) or not isinstance(order_id, str | int | None):
            raise InvalidJob([Problem("properties.order_id", "must be a string or an integer")])
        if _str(order_id) or isinstance(order_id, int):
            job["orderId"] = str(order_id)  # absent or blank: a purchase without orderId
    else:
        if event in SELECTED_KEYS:
            props = _uppercase_currency({k: props[k] for k in SELECTED_KEYS[event] if k in props})
        return [_custom_event(event, props, user, when, message.get("messageId"), rename_keys)]
    if when:
        job["occurredAt"] = when
    return [job]


def _identify(message: dict[str, Any], user: dict[str, Any]) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    external = user.get("externalIdentifiers", {})
    identity = {k: user[k] for k in ("phone", "email") if k in user} | external
    if external and len(identity) >= 2:
        jobs.append({"kind": "identity", **identity})
    attributes = {
        k: v
        for k, v in _traits(message).items()
        if k not in IDENTIFYING_TRAITS and isinstance(v, str | int | float) and v is not None
    }
    if attributes:
        jobs.append({"kind": "custom_attributes", "user": user, "properties": attributes})
    return jobs


def to_jobs(message: Any, *, rename_keys: bool = False, region: str = DEFAULT_REGION) -> list[dict[str, Any]] | Skip:
    """The Attentive jobs one Segment message stands for, or why it is skipped.

    Raises `InvalidJob` naming the Segment field when the message cannot make a valid call,
    and nothing else whatever the message holds: values JSON cannot carry (NaN, Infinity,
    numbers beyond ±(2^53 − 1), lone surrogates, hostile nesting) anywhere in the message are
    refused first, by their paths (`producers.job.jsonvalues`). The jobs still go through the
    usual validation when enqueued. ``region`` reads a userId written without +country when
    deciding whether it is a phone number (pass the settings' ``attentive_default_region``).
    """
    if not isinstance(message, dict):
        raise InvalidJob([Problem("", "a Segment message must be a JSON object")])
    unsafe = jsonvalues.problems(message)
    if unsafe:
        raise InvalidJob(unsafe)
    kind = message.get("type")
    if kind not in ("track", "page", "identify"):
        return Skip("unsupported_type")
    user = user_of(message, region=region)
    if not user:
        return Skip("no_identifier")
    if kind == "identify":
        jobs = _identify(message, user)
        return jobs or Skip("nothing_to_send")
    when = occurred_at(message)
    if kind == "page":
        props = _properties(message)
        page = {k: props[k] for k in PAGE_KEYS if k in props}
        if _str(message.get("name")):
            page.setdefault("name", message["name"])
        return [_custom_event("page", page, user, when, message.get("messageId"), rename_keys)]
    return _track(message, user, when, rename_keys)
