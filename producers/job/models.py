"""The job contract: one Attentive API call, written as its JSON body plus a ``kind``.

Field names are Attentive's own (``externalEventId``, ``occurredAt``, ...), so a user who
knows the API knows the format. Models are frozen and refuse unknown fields. Validation
needs a context ``{"region": "US"}`` for phone numbers written without a country code;
`producers.job.validation.parse_job` supplies it from the settings.

Empty strings and nulls in identifiers are dropped (never sent); everything else that breaks
a rule is an error naming the field.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationInfo,
    model_validator,
)

from producers import accounts
from producers.job import jsonvalues, rules

log = logging.getLogger("attentive_relay.jobs")

EVENT_PATHS: dict[str, str] = {
    "custom_event": "/v1/events/custom",
    "custom_attributes": "/v1/attributes/custom",
    "product_view": "/v1/events/ecommerce/product-view",
    "add_to_cart": "/v1/events/ecommerce/add-to-cart",
    "purchase": "/v1/events/ecommerce/purchase",
    "identity": "/v1/identity-resolution/user-identifiers",
}
"""Attentive endpoint of each kind (relative to ATTENTIVE_BASE_URL)."""

COUNTED_KINDS = frozenset({"purchase", "add_to_cart", "product_view"})
"""Kinds Attentive takes without an ``externalEventId``: each send counts, so one sent twice is
a double-counted order. Custom events carry an ``externalEventId`` and Yotpo events an
``event_id`` (a second send is the same event); attributes and identity calls set the same
values again."""


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, list | tuple) and not value:
        return None
    return value


def _phone(value: str, info: ValidationInfo) -> str:
    region = (info.context or {}).get("region", "US")
    return rules.normalize_phone(value, region)


def _rfc3339_only(value: Any) -> Any:
    # pydantic would also take Unix timestamps and bare dates; Attentive wants RFC 3339.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or len(value) < 20 or len(value) > 40 or value[10] not in "Tt ":
        raise ValueError("must be an RFC 3339 date-time with a UTC offset, e.g. 2026-01-31T09:30:00Z")
    return value


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is a valid datetime with no UTC counterpart
        raise ValueError("must fall between years 1 and 9999 in UTC") from None


Text = Annotated[str, StringConstraints(min_length=1, max_length=rules.MAX_TEXT)]
Identifier = Annotated[
    Annotated[str, StringConstraints(max_length=rules.MAX_TEXT)] | None, BeforeValidator(_blank_to_none)
]
PhoneText = Annotated[str, StringConstraints(max_length=64), AfterValidator(_phone)]
EmailText = Annotated[str, StringConstraints(max_length=rules.MAX_EMAIL), AfterValidator(rules.check_email)]
Phone = Annotated[PhoneText | None, BeforeValidator(_blank_to_none)]
Email = Annotated[EmailText | None, BeforeValidator(_blank_to_none)]
OccurredAt = Annotated[
    Annotated[AwareDatetime, BeforeValidator(_rfc3339_only), AfterValidator(_to_utc)] | None,
    BeforeValidator(_blank_to_none),
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _account_name(value: Any) -> Any:
    # The default account's name means the same as no name: one spelling in the stored job.
    return None if value == accounts.DEFAULT or _blank_to_none(value) is None else value


AccountName = Annotated[
    Annotated[str, StringConstraints(pattern=accounts.NAME.pattern)] | None, BeforeValidator(_account_name)
]


class _Job(_Model):
    account: AccountName = None
    """The account (brand) whose credentials deliver this job; None: the default account."""


class CustomIdentifier(_Model):
    name: Text
    value: Text


CustomIdentifiers = Annotated[tuple[CustomIdentifier, ...] | None, BeforeValidator(_blank_to_none)]


class ExternalIdentifiers(_Model):
    clientUserId: Identifier = None
    customIdentifiers: CustomIdentifiers = None


def _drop_empty(value: ExternalIdentifiers | None) -> ExternalIdentifiers | None:
    return value if value is not None and (value.clientUserId or value.customIdentifiers) else None


class User(_Model):
    phone: Phone = None
    email: Email = None
    externalIdentifiers: Annotated[ExternalIdentifiers | None, AfterValidator(_drop_empty)] = None

    @model_validator(mode="after")
    def _needs_an_identifier(self) -> User:
        ext = self.externalIdentifiers
        if not (self.phone or self.email or (ext and (ext.clientUserId or ext.customIdentifiers))):
            raise ValueError(
                "needs at least one of phone, email, externalIdentifiers.clientUserId, "
                "externalIdentifiers.customIdentifiers"
            )
        return self


def _event_properties(value: dict[str, JsonValue]) -> dict[str, JsonValue]:
    if len(value) > rules.MAX_PROPERTIES:
        raise ValueError(f"at most {rules.MAX_PROPERTIES} properties")
    bad = sorted(k for k in value if rules.forbidden_chars(k, rules.PROPERTY_KEY_FORBIDDEN) or not k)
    if bad:
        raise ValueError(
            f"property names must be non-empty and free of {rules.PROPERTY_KEY_FORBIDDEN}; "
            f"offending names: {', '.join(bad[:20])}"
        )
    if rules.json_depth(value) > rules.MAX_DEPTH:
        raise ValueError(f"nested deeper than {rules.MAX_DEPTH} levels")
    if len(value) > rules.JOURNEY_KEY_LIMIT:
        log.warning("custom event has %d property keys; Journeys use only %d", len(value), rules.JOURNEY_KEY_LIMIT)
    return value


def _attribute_properties(value: dict[str, Any]) -> dict[str, Any]:
    if not value:
        raise ValueError("must hold at least one attribute")
    if len(value) > rules.MAX_PROPERTIES:
        raise ValueError(f"at most {rules.MAX_PROPERTIES} attributes")
    too_long = sorted(k[:40] for k in value if len(k) > rules.MAX_ATTRIBUTE_NAME)
    if too_long:
        raise ValueError(
            f"attribute names must be at most {rules.MAX_ATTRIBUTE_NAME} characters: " + ", ".join(too_long[:20])
        )
    empty = [k for k in value if not k]
    if empty:
        raise ValueError("attribute names must not be empty")
    bad_type = sorted(k for k, v in value.items() if not isinstance(v, str | int | float))
    if bad_type:
        raise ValueError(
            "values must be a string, number or boolean (no null, array or object): " + ", ".join(bad_type[:20])
        )
    long_value = sorted(k for k, v in value.items() if isinstance(v, str) and len(v) > rules.MAX_TEXT)
    if long_value:
        raise ValueError(f"values must be at most {rules.MAX_TEXT} characters: " + ", ".join(long_value[:20]))
    return value


class CustomEvent(_Job):
    kind: Literal["custom_event"] = "custom_event"
    type: Annotated[str, StringConstraints(max_length=rules.MAX_EVENT_TYPE), AfterValidator(rules.check_event_type)]
    user: User
    properties: Annotated[dict[str, JsonValue], AfterValidator(_event_properties)] | None = None
    externalEventId: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    occurredAt: OccurredAt = None


class CustomAttributes(_Job):
    kind: Literal["custom_attributes"] = "custom_attributes"
    user: User
    properties: Annotated[dict[str, Any], AfterValidator(_attribute_properties)]


class Price(_Model):
    value: Annotated[
        float,
        Field(ge=0, le=jsonvalues.MAX_NUMBER, allow_inf_nan=False, strict=False),
        BeforeValidator(lambda v: v if not isinstance(v, bool) else _not_bool()),
    ]
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$", to_upper=True)] = "USD"


def _not_bool() -> None:
    raise ValueError("must be a number")


class Item(_Model):
    productId: Text
    productVariantId: Text
    price: Annotated[tuple[Price, ...], Field(min_length=1, max_length=10)]
    name: Text | None = None
    productImage: Text | None = None
    productUrl: Annotated[str, StringConstraints(min_length=1, max_length=2048)] | None = None
    quantity: Annotated[int, Field(ge=1, le=1_000_000, strict=True)] | None = None


Items = Annotated[tuple[Item, ...], Field(min_length=1, max_length=100)]


class ProductView(_Job):
    kind: Literal["product_view"] = "product_view"
    user: User
    items: Items
    occurredAt: OccurredAt = None


class AddToCart(_Job):
    kind: Literal["add_to_cart"] = "add_to_cart"
    user: User
    items: Items
    occurredAt: OccurredAt = None


class Purchase(_Job):
    kind: Literal["purchase"] = "purchase"
    user: User
    items: Items
    occurredAt: OccurredAt = None
    orderId: Text | None = None
    salesChannel: Text | None = None


IdentityText = Annotated[str, StringConstraints(max_length=rules.MAX_IDENTITY_VALUE)]
IdentityValue = Annotated[IdentityText | None, BeforeValidator(_blank_to_none)]


class IdentityIdentifier(_Model):
    name: Annotated[str, StringConstraints(min_length=1, max_length=rules.MAX_IDENTITY_VALUE)]
    value: Annotated[str, StringConstraints(min_length=1, max_length=rules.MAX_IDENTITY_VALUE)]


class Identity(_Job):
    kind: Literal["identity"] = "identity"
    phone: Phone = None
    email: Annotated[
        Annotated[IdentityText, AfterValidator(rules.check_email)] | None, BeforeValidator(_blank_to_none)
    ] = None
    shopifyId: IdentityValue = None
    klaviyoId: IdentityValue = None
    clientUserId: IdentityValue = None
    customIdentifiers: Annotated[tuple[IdentityIdentifier, ...] | None, BeforeValidator(_blank_to_none)] = None

    @model_validator(mode="after")
    def _attentive_identity_rules(self) -> Identity:
        if not (self.clientUserId or self.customIdentifiers):
            raise ValueError("clientUserId or customIdentifiers must be set")
        present = [
            f
            for f in ("phone", "email", "shopifyId", "klaviyoId", "clientUserId", "customIdentifiers")
            if getattr(self, f)
        ]
        if len(present) < 2:
            raise ValueError("at least one other identifier must be set besides " + " and ".join(present))
        return self


AttentiveJob = CustomEvent | CustomAttributes | ProductView | AddToCart | Purchase | Identity
"""Every Attentive job model; `producers.job.validation.Job` adds the other destinations' kinds."""


def attentive_body(job: BaseModel) -> dict[str, Any]:
    """The JSON body of the Attentive call: the job without ``kind``, ``account`` and nulls."""
    return job.model_dump(mode="json", exclude_none=True, exclude={"kind", "account"})


def occurred_at(job: BaseModel) -> datetime | None:
    return getattr(job, "occurredAt", None)
