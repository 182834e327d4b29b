"""Every job rule, through `parse_job` with real settings and a fixed clock."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from producers.errors import InvalidJob
from producers.job.models import attentive_body
from producers.job.validation import parse_job
from producers.settings import Settings

NOW = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
WHEN = "2026-01-31T11:00:00Z"
PHONE = "+14155552671"
EMAIL = "jane.doe@example.com"
CRM = {"name": "crm", "value": "42"}
ITEM = {"productId": "sku-1", "productVariantId": "sku-1-red", "price": [{"value": 19.99, "currency": "USD"}]}


def parse(data: Any, at_enqueue: bool = True, **settings: Any) -> Any:
    return parse_job(data, Settings(**settings), NOW, at_enqueue=at_enqueue)


def body(data: Any, **kw: Any) -> dict[str, Any]:
    return attentive_body(parse(data, **kw))


def refused(data: Any, **kw: Any) -> InvalidJob:
    with pytest.raises(InvalidJob) as exc:
        parse(data, **kw)
    assert exc.value.reason == "invalid" and isinstance(exc.value, ValueError)
    return exc.value


def fields(data: Any, **kw: Any) -> list[str]:
    return [p.field for p in refused(data, **kw).problems]


def event(**over: Any) -> dict[str, Any]:
    job = {"kind": "custom_event", "type": "Order Shipped", "user": {"phone": PHONE}, "externalEventId": "e-1"}
    return {**job, "occurredAt": WHEN, **over}


def shop(kind: str = "purchase", **over: Any) -> dict[str, Any]:
    return {"kind": kind, "user": {"email": EMAIL}, "items": [ITEM], "occurredAt": WHEN, **over}


def identity(**over: Any) -> dict[str, Any]:
    return {"kind": "identity", "clientUserId": "u-1", "email": EMAIL, **over}


VALID = [
    (
        event(user={"phone": "(415) 555-2671", "email": EMAIL}, properties={"orderId": "o-1", "n": {"a": [1, 2.5]}}),
        {
            "type": "Order Shipped",
            "user": {"phone": PHONE, "email": EMAIL},
            "externalEventId": "e-1",
            "occurredAt": WHEN,
            "properties": {"orderId": "o-1", "n": {"a": [1, 2.5]}},
        },
    ),
    (
        {"kind": "custom_attributes", "user": {"email": EMAIL}, "properties": {"tier": "gold", "pts": 3, "vip": True}},
        {"user": {"email": EMAIL}, "properties": {"tier": "gold", "pts": 3, "vip": True}},
    ),
    (shop("product_view"), {"user": {"email": EMAIL}, "items": [ITEM], "occurredAt": WHEN}),
    (
        shop("add_to_cart", items=[{**ITEM, "quantity": 2, "name": "Red shirt", "productUrl": "https://x.test/p"}]),
        {
            "user": {"email": EMAIL},
            "occurredAt": WHEN,
            "items": [{**ITEM, "quantity": 2, "name": "Red shirt", "productUrl": "https://x.test/p"}],
        },
    ),
    (
        shop(orderId="o-9", salesChannel="web"),
        {"user": {"email": EMAIL}, "items": [ITEM], "occurredAt": WHEN, "orderId": "o-9", "salesChannel": "web"},
    ),
    (identity(phone="415-555-2671"), {"clientUserId": "u-1", "email": EMAIL, "phone": PHONE}),
    (
        identity(clientUserId=None, email=None, customIdentifiers=[CRM], shopifyId="s-1"),
        {"customIdentifiers": [CRM], "shopifyId": "s-1"},
    ),
]


@pytest.mark.parametrize(("job", "expected"), VALID, ids=[j["kind"] for j, _ in VALID])
def test_each_kind_valid_gives_exact_body(job: dict[str, Any], expected: dict[str, Any]) -> None:
    assert body(job) == expected


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("(415) 555-2671", "US", PHONE),
        ("415.555.2671", "US", PHONE),
        ("+1 415-555-2671", "GB", PHONE),
        ("020 7946 0018", "GB", "+442079460018"),
        ("07400 123456", "GB", "+447400123456"),
    ],
)
def test_phone_normalized_to_e164_in_default_region(raw: str, region: str, e164: str) -> None:
    assert body(event(user={"phone": raw}), attentive_default_region=region)["user"] == {"phone": e164}


@pytest.mark.parametrize("raw", ["call me maybe", "555", "+1 415", "999 888 77", "020 7946 0018"])
def test_unparseable_phone_refused_without_echo(raw: str) -> None:
    err = refused(event(user={"phone": raw}))
    assert [p.field for p in err.problems] == ["user.phone"]
    assert raw not in str(err)


@pytest.mark.parametrize("raw", ["jane.doe@", "jane doe@example.com", "jane@example", "@example.com"])
def test_invalid_email_refused_without_echo(raw: str) -> None:
    err = refused(event(user={"email": raw}))
    assert [p.field for p in err.problems] == ["user.email"]
    assert raw not in str(err)


def test_empty_and_null_identifiers_are_omitted() -> None:
    user = {"phone": "", "email": EMAIL, "externalIdentifiers": {"clientUserId": "  ", "customIdentifiers": []}}
    assert body(event(user=user))["user"] == {"email": EMAIL}
    ext = {"clientUserId": "c-1"}
    assert body(event(user={"phone": None, "email": "", "externalIdentifiers": ext}))["user"] == {
        "externalIdentifiers": ext
    }


@pytest.mark.parametrize(
    ("ident", "field"), [({"name": "", "value": "42"}, "name"), ({"name": "crm", "value": ""}, "value")]
)
def test_custom_identifier_with_empty_part_is_an_error(ident: dict[str, str], field: str) -> None:
    user = {"phone": PHONE, "externalIdentifiers": {"customIdentifiers": [ident]}}
    assert fields(event(user=user)) == [f"user.externalIdentifiers.customIdentifiers[0].{field}"]


@pytest.mark.parametrize("user", [{}, {"phone": "", "email": None}, {"externalIdentifiers": {"clientUserId": ""}}])
def test_user_needs_an_identifier(user: dict[str, Any]) -> None:
    assert fields(event(user=user)) == ["user"]


def test_user_refuses_extra_fields() -> None:
    assert fields(event(user={"phone": PHONE, "firstName": "Jane"})) == ["user.firstName"]


@pytest.mark.parametrize("char", ['"', "'", "(", ")", "{", "}", "[", "]", "\\", "|", ","])
def test_event_type_forbidden_chars(char: str) -> None:
    assert fields(event(type=f"Order{char}Shipped")) == ["type"]


def test_event_type_case_preserved() -> None:
    assert body(event(type="oRdEr SHIPPED-v2.1"))["type"] == "oRdEr SHIPPED-v2.1"


@pytest.mark.parametrize("char", ["'", '"', "{", "}", "[", "]", "\\", ",", "|"])
def test_property_key_forbidden_chars(char: str) -> None:
    assert fields(event(properties={"ok": 1, f"order{char}id": 1})) == ["properties"]


def test_many_property_keys_accepted_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="attentive_relay.jobs"):
        assert len(body(event(properties={f"k{i}": i for i in range(200)}))["properties"]) == 200
        assert not caplog.records
        assert len(body(event(properties={f"k{i}": i for i in range(201)}))["properties"]) == 201
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "201" in caplog.records[0].getMessage()


@pytest.mark.parametrize("props", [{"a": [1, 2]}, {"a": {"b": 1}}, {"a": None}, {"x" * 201: 1}, {}])
def test_custom_attributes_refused(props: dict[str, Any]) -> None:
    assert fields({"kind": "custom_attributes", "user": {"phone": PHONE}, "properties": props}) == ["properties"]


def test_attribute_name_of_200_chars_accepted() -> None:
    assert body({"kind": "custom_attributes", "user": {"phone": PHONE}, "properties": {"x" * 200: 1.5}})


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ([], "items"),
        (None, "items"),
        ([{**ITEM, "price": {"value": 19.99, "currency": "USD"}}], "items[0].price"),
        ([ITEM, {**ITEM, "price": []}], "items[1].price"),
        ([{**ITEM, "price": [{"value": -1}]}], "items[0].price[0].value"),
        ([{**ITEM, "price": [{"value": True}]}], "items[0].price[0].value"),
        ([{**ITEM, "price": [{"value": 1, "currency": "EURO"}]}], "items[0].price[0].currency"),
        ([ITEM, {**ITEM, "quantity": 2.5}], "items[1].quantity"),
        ([{**ITEM, "quantity": "2"}], "items[0].quantity"),
        ([{**ITEM, "quantity": 0}], "items[0].quantity"),
        ([{k: v for k, v in ITEM.items() if k != "price"}], "items[0].price"),
    ],
)
def test_item_rules(items: Any, field: str) -> None:
    assert fields(shop(items=items)) == [field]


def test_single_item_with_empty_price_reports_only_the_price() -> None:
    assert fields(shop(items=[{**ITEM, "price": []}])) == ["items[0].price"]


def test_price_decimals_kept_currency_uppercased_default_usd() -> None:
    items = [{**ITEM, "price": [{"value": 19.99, "currency": "eur"}, {"value": 0.1}], "quantity": 3}]
    assert body(shop(items=items))["items"][0]["price"] == [
        {"value": 19.99, "currency": "EUR"},
        {"value": 0.1, "currency": "USD"},
    ]
    assert '"value":19.99' in json.dumps(body(shop()), separators=(",", ":"))


def test_purchase_order_id() -> None:
    assert body(shop(orderId="order-1001"))["orderId"] == "order-1001"
    assert fields(shop(orderId="")) == ["orderId"]


@pytest.mark.parametrize(
    ("job", "rule"),
    [
        ({"kind": "identity", "email": EMAIL, "phone": PHONE}, "clientUserId or customIdentifiers must be set"),
        ({"kind": "identity", "clientUserId": "u-1"}, "at least one other identifier"),
        ({"kind": "identity", "customIdentifiers": [CRM]}, "at least one other identifier"),
    ],
)
def test_identity_rules(job: dict[str, Any], rule: str) -> None:
    assert [p.field for p in refused(job).problems] == [""]
    assert rule in str(refused(job))


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"clientUserId": "u" * 101}, "clientUserId"),
        ({"shopifyId": "s" * 101}, "shopifyId"),
        ({"klaviyoId": "k" * 101}, "klaviyoId"),
        ({"email": "j" * 90 + "@example.com"}, "email"),
        ({"customIdentifiers": [{"name": "crm", "value": "v" * 101}]}, "customIdentifiers[0].value"),
    ],
)
def test_identity_values_at_most_100_chars(over: dict[str, Any], field: str) -> None:
    assert fields(identity(**over)) == [field]
    assert body(identity(clientUserId="u" * 100, shopifyId="s" * 100))["clientUserId"] == "u" * 100


@pytest.mark.parametrize(
    ("raw", "utc"),
    [
        ("2026-01-31T09:30:00+05:30", "2026-01-31T04:00:00Z"),
        ("2026-01-31T03:30:00.250-08:00", "2026-01-31T11:30:00.250000Z"),
        ("2026-01-31 11:00:00+00:00", WHEN),
    ],
)
def test_occurred_at_normalized_to_utc(raw: str, utc: str) -> None:
    assert body(event(occurredAt=raw))["occurredAt"] == utc


@pytest.mark.parametrize(
    "raw", ["2026-01-31T11:00:00", "2026-01-31T11:00:00.123456", 1769857200, "1769857200", "2026-01-31", "yesterday"]
)
def test_occurred_at_must_be_rfc3339_with_offset(raw: Any) -> None:
    assert fields(event(occurredAt=raw)) == ["occurredAt"]


@pytest.mark.parametrize("kind", ["custom_event", "product_view", "add_to_cart", "purchase"])
def test_enqueue_stamps_missing_occurred_at(kind: str) -> None:
    job = {k: v for k, v in (event() if kind == "custom_event" else shop(kind)).items() if k != "occurredAt"}
    assert body(job)["occurredAt"] == "2026-01-31T12:00:00Z"
    assert body({**job, "occurredAt": ""})["occurredAt"] == "2026-01-31T12:00:00Z"


def test_enqueue_stamps_blank_occurred_at() -> None:
    assert body(event(occurredAt="   ")).get("occurredAt") == "2026-01-31T12:00:00Z"


def test_enqueue_gives_missing_external_event_id_a_uuid() -> None:
    first, second = body(event(externalEventId=None)), body(event(externalEventId=""))
    assert uuid.UUID(first["externalEventId"]) != uuid.UUID(second["externalEventId"])
    assert body(event())["externalEventId"] == "e-1"


def test_attributes_and_identity_are_not_stamped() -> None:
    assert "occurredAt" not in body({"kind": "custom_attributes", "user": {"email": EMAIL}, "properties": {"a": 1}})
    assert "occurredAt" not in body(identity())


def test_enqueue_refuses_stale_and_future_events() -> None:
    assert fields(event(occurredAt="2026-01-30T23:59:59Z")) == ["occurredAt"]
    assert body(event(occurredAt="2026-01-31T00:00:00Z"))  # exactly 12 h old: still fresh
    assert fields(event(occurredAt="2026-01-31T09:59:00Z"), attentive_freshness_hours=2) == ["occurredAt"]
    assert fields(event(occurredAt="2026-01-31T12:05:01Z")) == ["occurredAt"]
    assert body(event(occurredAt="2026-01-31T12:04:59Z"))
    assert fields(event(occurredAt="2026-01-31T12:00:31Z"), attentive_future_skew_s=30) == ["occurredAt"]


def test_at_delivery_nothing_stamped_and_stale_is_not_invalid() -> None:
    job = {k: v for k, v in event().items() if k not in ("occurredAt", "externalEventId")}
    assert body(job, at_enqueue=False) == {"type": "Order Shipped", "user": {"phone": PHONE}}
    stale = parse(event(occurredAt="2026-01-29T12:00:00Z"), at_enqueue=False)
    assert stale.occurredAt == datetime(2026, 1, 29, 12, tzinfo=UTC)
    assert fields(event(occurredAt="2026-01-31T12:05:01Z"), at_enqueue=False) == ["occurredAt"]


def test_every_problem_listed_by_field_without_values() -> None:
    bad_phone, bad_email = "999 888 77", "jane.doe@nowhere"
    job = event(type="Bad|Type", user={"phone": bad_phone, "email": bad_email}, properties={"a,b": 1}, extra=1)
    err = refused(job)
    assert sorted(p.field for p in err.problems) == ["extra", "properties", "type", "user.email", "user.phone"]
    assert bad_phone not in str(err) and bad_email not in str(err) and all(p.rule for p in err.problems)
    items = [{**ITEM, "price": {"value": 1}}, {**ITEM, "quantity": -1}]
    assert fields(shop(items=items, user={"phone": "12"})) == ["user.phone", "items[0].price", "items[1].quantity"]


NOT_AN_OBJECT: list[tuple[Any, str]] = [
    (d, "a job must be a JSON object") for d in ([1], "[1]", b"42", "null", None, 3.5)
]
NOT_JSON = [
    ("{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    ("x" * 70_000, "job is larger than 65536 bytes"),
]


@pytest.mark.parametrize(("data", "rule"), NOT_AN_OBJECT + NOT_JSON)
def test_non_object_non_json_oversized_refused(data: Any, rule: str) -> None:
    err = refused(data)
    assert [(p.field, p.rule) for p in err.problems] == [("", rule)]


def test_json_text_and_model_input_accepted() -> None:
    job = parse(json.dumps(event()))
    assert parse(job) == job and parse(json.dumps(event()).encode()) == job


@pytest.mark.parametrize("job", [{"type": "x"}, {"kind": "page_view", "type": "x"}, {"kind": 5}])
def test_unknown_or_missing_kind(job: dict[str, Any]) -> None:
    assert fields(job) == ["kind"]


def test_unhashable_kind_is_invalid_not_a_crash() -> None:
    assert fields({"kind": ["custom_event"], "type": "x"}) == ["kind"]


MULTIBYTE = json.dumps(event(properties={"note": "€" * 30_000}), ensure_ascii=False)  # 30k chars, 90 kB


def test_size_limit_counts_bytes_of_bytes_input() -> None:
    assert "larger than" in str(refused(MULTIBYTE.encode()))
    assert "larger than" in str(refused(json.dumps(event(properties={"p": "y" * 70_000}))))


def test_size_limit_counts_bytes_of_str_input() -> None:
    assert "larger than" in str(refused(MULTIBYTE))


# Values JSON cannot carry faithfully: refused by path, never turned into null, never a crash.


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_time_with_no_utc_counterpart_is_invalid_not_an_overflow(when: str) -> None:
    err = refused(event(occurredAt=when))
    assert [(p.field, p.rule) for p in err.problems] == [("occurredAt", "must fall between years 1 and 9999 in UTC")]


NOT_FINITE = "must be a finite number (NaN and Infinity cannot be sent)"
PRICED = '{"kind": "purchase", "user": {"email": "a@example.com"}, "items": [{"productId": "p", '
PRICED += '"productVariantId": "v", "price": [{"value": %s}]}]}'


@pytest.mark.parametrize("value", ["1e400", "Infinity", "-Infinity", "NaN", '"inf"', '"nan"', '"1e400"'])
def test_a_price_that_is_not_a_finite_number_is_refused_not_sent_as_null(value: str) -> None:
    err = refused(PRICED % value)
    assert [p.field for p in err.problems] == ["items[0].price[0].value"]
    assert "finite" in err.problems[0].rule


def test_nan_and_infinity_in_attributes_and_event_properties_are_refused_by_path() -> None:
    attributes = {"kind": "custom_attributes", "user": {"email": EMAIL}, "properties": {"a": float("nan"), "b": 1}}
    assert [(p.field, p.rule) for p in refused(attributes).problems] == [("properties.a", NOT_FINITE)]
    nested = event(properties={"n": {"list": [1, float("inf")]}, "m": -float("inf")})
    assert [p.field for p in refused(nested).problems] == ["properties.n.list[1]", "properties.m"]
    text = '{"kind": "custom_event", "type": "x", "user": {"email": "a@example.com"}, "properties": {"p": NaN}}'
    assert [p.field for p in refused(text).problems] == ["properties.p"]


@pytest.mark.parametrize(
    "number", [2**53, -(2**53), 10**30, 10**5000, 1e300], ids=["2^53", "-2^53", "1e30", "1e5000", "1e300f"]
)
def test_numbers_beyond_two_to_the_53_are_refused(number: float) -> None:
    err = refused(event(properties={"id": number}))
    assert [p.field for p in err.problems] == ["properties.id"] and "between" in err.problems[0].rule


def test_numbers_up_to_two_to_the_53_minus_one_are_kept_exactly() -> None:
    assert body(event(properties={"id": 2**53 - 1, "neg": -(2**53 - 1)}))["properties"] == {
        "id": 9007199254740991,
        "neg": -9007199254740991,
    }


def test_lone_surrogates_in_values_and_names_are_refused_and_the_error_prints() -> None:
    err = refused(event(type="Order\udcff", properties={"ok": "x\ud800", "k\udcff": 1}))
    assert [p.field for p in err.problems] == ["type", "properties.ok", "properties.k\\udcff"]
    str(err).encode("utf-8")  # the message itself is printable
    text = json.dumps(event(properties={"p": "\udcff"}))  # the JSON escape that makes a surrogate
    assert [p.field for p in refused(text).problems] == ["properties.p"]


def test_non_string_keys_are_refused() -> None:
    assert [(p.field, p.rule) for p in refused(event(properties={1: "x"})).problems] == [
        ("properties", "names must be strings")
    ]


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def test_properties_nest_to_the_limit_and_no_further_however_deep_the_input() -> None:
    assert parse(event(properties=_nested(15)))  # the properties object plus 15 levels: 16
    err = refused(event(properties=_nested(16)))
    assert [p.rule for p in err.problems] == ["nested deeper than 16 levels"]
    hostile: Any = []
    for _ in range(100_000):
        hostile = [hostile]
    assert [p.rule for p in refused(event(properties={"a": hostile})).problems] == ["nested deeper than 16 levels"]


def test_a_model_holding_nan_is_refused_not_serialised_as_null() -> None:
    from producers.job.models import CustomAttributes, User

    model = CustomAttributes(user=User(email=EMAIL), properties={"score": float("nan")})
    assert [p.field for p in refused(model).problems] == ["properties.score"]


def test_json_text_with_a_number_too_long_for_python_or_nesting_too_deep_names_the_field() -> None:
    long_number = json.dumps(event(properties={"n": 1})).replace('"n": 1', '"n": ' + "9" * 5000)
    assert [p.field for p in refused(long_number).problems] == ["properties.n"]
    deep = json.dumps(event(properties={"d": 1})).replace('"d": 1', '"d": ' + "[" * 3000 + "]" * 3000)
    assert [p.rule for p in refused(deep).problems] == ["nested deeper than 16 levels"]
