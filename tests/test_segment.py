"""Segment messages to the exact Attentive request bodies the worker sends (one test per mapping row)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from producers.errors import InvalidJob
from producers.segment import mapping as segment
from producers.store import keys
from producers.store.message import ticket_for

from conftest import delivery_for, make_settings, mapped, queued_count, sandbox_requests

WHEN = (datetime.now(UTC) - timedelta(minutes=5)).replace(microsecond=0)
STAMP = WHEN.isoformat().replace("+00:00", "Z")
PHONE, EMAIL = "+14155552671", "jane@example.com"
USER = {"phone": PHONE, "email": EMAIL, "externalIdentifiers": {"clientUserId": "u-1"}}


def message(kind: str, **fields: Any) -> dict[str, Any]:
    base = {
        "type": kind,
        "userId": "u-1",
        "messageId": "m-1",
        "timestamp": STAMP,
        "context": {"traits": {"phone": "(415) 555-2671", "email": EMAIL}},
    }
    return {**base, **fields}


def sent(settings, producer, redis_client, sandbox, msg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Enqueue ``msg`` as Segment, let the worker's delivery run, return (path, body) as Attentive got them."""
    delivery = delivery_for(settings, redis_client)
    for job_id in producer.enqueue_segment(msg):
        assert delivery.run(job_id, ticket_for(job_id, 0)) == "delivered"
    return [(r["path"], r["body"]) for r in sandbox_requests(sandbox)]


@pytest.fixture
def deliver(settings, producer, redis_client, sandbox):
    return lambda msg: sent(settings, producer, redis_client, sandbox, msg)


def test_a_message_without_email_phone_or_user_id_is_skipped_and_counted(producer, redis_client):
    msg = {"type": "track", "event": "Viewed", "anonymousId": "anon", "traits": {"name": "Jane"}}
    assert producer.enqueue_segment(msg) == []
    assert redis_client.hget(keys.STATS, "skipped:no_identifier") == b"1"
    assert producer.enqueue_segment({"type": "group", "userId": "u-1"}) == []
    assert redis_client.hget(keys.STATS, "skipped:unsupported_type") == b"1"


def test_identifiers_come_from_traits_and_context_traits_and_never_put_email_in_client_user_id():
    msg = {
        "type": "track",
        "event": "X",
        "userId": "jane@example.com",
        "context": {"traits": {"phone": "1"}},
        "traits": {"phone": "+14155552671", "username": "jane", "email": ""},
    }
    assert segment.user_of(msg) == {
        "phone": "+14155552671",
        "externalIdentifiers": {"customIdentifiers": [{"name": "username", "value": "jane"}]},
    }
    assert segment.user_of({"userId": "+1 (415) 555-2671"}) == {}
    assert segment.user_of({"userId": 42}) == {"externalIdentifiers": {"clientUserId": "42"}}


@pytest.mark.parametrize("user_id", ["7182391234567", 7182391234567, "1234567", " 5749385674893 ", "020 7946 0958"])
def test_a_numeric_user_id_that_is_no_valid_phone_number_is_the_client_user_id(user_id):
    """Shopify customer ids are long digit runs; only a valid phone number (in the region) is left out."""
    assert segment.user_of({"userId": user_id}) == {"externalIdentifiers": {"clientUserId": str(user_id)}}


@pytest.mark.parametrize(
    ("user_id", "region"),
    [
        ("4155552671", "US"),
        (14155552671, "US"),
        ("+1 (415) 555-2671", "US"),
        ("020 7946 0958", "GB"),
        ("+447911123456", "US"),
    ],
)
def test_a_user_id_that_is_a_valid_phone_number_is_never_the_client_user_id(user_id, region):
    assert segment.user_of({"userId": user_id}, region=region) == {}
    assert segment.to_jobs({"type": "track", "event": "X", "userId": user_id}, region=region) == segment.Skip(
        "no_identifier"
    )


def test_identify_with_a_numeric_shopify_user_id_makes_the_identity_call(deliver):
    msg = message("identify", userId=7182391234567, context={"traits": {"email": EMAIL}}, traits={"plan": "gold"})
    user = {"email": EMAIL, "externalIdentifiers": {"clientUserId": "7182391234567"}}
    assert deliver(msg) == [
        ("/v1/identity-resolution/user-identifiers", {"email": EMAIL, "clientUserId": "7182391234567"}),
        ("/v1/attributes/custom", {"user": user, "properties": {"plan": "gold"}}),
    ]


def test_occurred_at_is_the_first_of_timestamp_original_timestamp_sent_at_in_utc():
    assert segment.occurred_at({"originalTimestamp": "2026-11-23T10:00:00+02:00", "sentAt": "x"}) == (
        "2026-11-23T08:00:00Z"
    )
    assert segment.occurred_at({"sentAt": "2026-11-23T10:00:00.5Z"}) == "2026-11-23T10:00:00.500000Z"
    with pytest.raises(InvalidJob, match="timestamp"):
        segment.occurred_at({"timestamp": "yesterday"})


def test_identify_makes_an_identity_call_and_a_custom_attributes_call(deliver):
    msg = message(
        "identify",
        traits={
            "username": "jane",
            "plan": "gold",
            "visits": 3,
            "vip": True,
            "address": {"city": "SF"},
            "tags": ["a"],
            "nothing": None,
        },
    )
    external = {"clientUserId": "u-1", "customIdentifiers": [{"name": "username", "value": "jane"}]}
    assert deliver(msg) == [
        ("/v1/identity-resolution/user-identifiers", {"phone": PHONE, "email": EMAIL, **external}),
        (
            "/v1/attributes/custom",
            {
                "user": {"phone": PHONE, "email": EMAIL, "externalIdentifiers": external},
                "properties": {"plan": "gold", "visits": 3, "vip": True},
            },
        ),
    ]


def test_identify_without_an_external_identifier_sends_attributes_only(deliver):
    msg = message("identify", userId=None, traits={"plan": "gold"})
    assert deliver(msg) == [
        ("/v1/attributes/custom", {"user": {"phone": PHONE, "email": EMAIL}, "properties": {"plan": "gold"}})
    ]


def test_identify_with_nothing_to_send_is_skipped(producer, redis_client):
    assert producer.enqueue_segment({"type": "identify", "traits": {"email": EMAIL}}) == []
    assert redis_client.hget(keys.STATS, "skipped:nothing_to_send") == b"1"


PRODUCT = {
    "product_id": "p-1",
    "variant": "p-1-red",
    "name": "Tee",
    "price": 19.99,
    "currency": "eur",
    "quantity": 2,
    "image_url": "https://example.com/t.png",
    "url": "https://example.com/t",
}
ITEM = {
    "productId": "p-1",
    "productVariantId": "p-1-red",
    "price": [{"value": 19.99, "currency": "EUR"}],
    "name": "Tee",
    "productImage": "https://example.com/t.png",
    "productUrl": "https://example.com/t",
    "quantity": 2,
}


@pytest.mark.parametrize(
    ("event", "path"),
    [("Product Viewed", "/v1/events/ecommerce/product-view"), ("Product Added", "/v1/events/ecommerce/add-to-cart")],
)
def test_product_viewed_and_added_become_ecommerce_calls_with_one_item(deliver, event, path):
    assert deliver(message("track", event=event, properties=PRODUCT)) == [
        (path, {"user": USER, "items": [ITEM], "occurredAt": STAMP})
    ]


def test_order_completed_becomes_a_purchase_with_every_product(deliver):
    props = {"order_id": "o-9", "currency": "usd", "products": [PRODUCT, {"sku": "s-2", "price": 5, "quantity": 1.0}]}
    second = {"productId": "s-2", "productVariantId": "s-2", "price": [{"value": 5, "currency": "USD"}], "quantity": 1}
    assert deliver(message("track", event="Order Completed", properties=props)) == [
        (
            "/v1/events/ecommerce/purchase",
            {"user": USER, "items": [ITEM, second], "occurredAt": STAMP, "orderId": "o-9"},
        )
    ]


def test_order_completed_without_order_id_is_a_purchase_without_order_id(deliver):
    """Attentive's purchase schema requires items and user only (see the module docstring)."""
    assert deliver(message("track", event="Order Completed", properties={"products": [PRODUCT]})) == [
        ("/v1/events/ecommerce/purchase", {"user": USER, "items": [ITEM], "occurredAt": STAMP})
    ]
    blank = message("track", event="Order Completed", properties={"order_id": "  ", "products": [PRODUCT]})
    assert "orderId" not in mapped(blank)[0]


@pytest.mark.parametrize("order_id", [{"id": 1}, ["o-1"], True, 10.5])
def test_an_order_id_that_is_no_string_or_integer_is_refused(order_id):
    msg = message("track", event="Order Completed", properties={"order_id": order_id, "products": [PRODUCT]})
    with pytest.raises(InvalidJob) as caught:
        segment.to_jobs(msg)
    assert [(p.field, p.rule) for p in caught.value.problems] == [
        ("properties.order_id", "must be a string or an integer")
    ]


def test_item_fallbacks_and_refusals_name_the_segment_field(producer):
    assert (
        mapped(message("track", event="Product Viewed", properties={"id": "i-1", "price": 1}))[0]["items"][0][
            "productId"
        ]
        == "i-1"
    )
    with pytest.raises(InvalidJob) as caught:
        producer.enqueue_segment(
            message("track", event="Order Completed", properties={"products": [{"product_id": "p", "quantity": 1.5}]})
        )
    assert {p.field for p in caught.value.problems} == {
        "properties.products[0].price",
        "properties.products[0].quantity",
    }
    with pytest.raises(InvalidJob, match=r"properties\.products"):
        producer.enqueue_segment(message("track", event="Order Completed", properties={}))


def test_prices_and_quantities_sent_as_decimal_strings_are_numbers(deliver):
    """Segment sources often send numbers as strings; RudderStack and Segment's destinations read them."""
    props = {**PRODUCT, "price": " 19.99 ", "quantity": "2"}
    second = {"sku": "s-2", "price": "5", "quantity": "3.0"}
    order = message("track", event="Order Completed", properties={"order_id": 1001, "products": [props, second]})
    item = {"productId": "s-2", "productVariantId": "s-2", "price": [{"value": 5, "currency": "USD"}], "quantity": 3}
    assert deliver(order) == [
        (
            "/v1/events/ecommerce/purchase",
            {"user": USER, "items": [ITEM, item], "occurredAt": STAMP, "orderId": "1001"},
        )
    ]
    jobs = mapped(message("track", event="Product Added", properties={"id": "i", "price": "+0019"}))
    assert jobs[0]["items"][0]["price"] == [{"value": 19, "currency": "USD"}]
    assert isinstance(jobs[0]["items"][0]["price"][0]["value"], int)


NOT_A_NUMBER = "must be a number or a decimal string"


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("price", "1e3", NOT_A_NUMBER),
        ("price", "0x10", NOT_A_NUMBER),
        ("price", "NaN", NOT_A_NUMBER),
        ("price", "Infinity", NOT_A_NUMBER),
        ("price", "1,299.00", NOT_A_NUMBER),
        ("price", "$19.99", NOT_A_NUMBER),
        ("price", "19.", NOT_A_NUMBER),
        ("price", ".5", NOT_A_NUMBER),
        ("price", "1 9", NOT_A_NUMBER),
        ("price", "", NOT_A_NUMBER),
        ("price", "\u0661\u0669", NOT_A_NUMBER),  # Arabic-Indic digits: int() reads them, Segment does not
        ("price", [19], NOT_A_NUMBER),
        ("price", True, NOT_A_NUMBER),
        ("price", "9" * 16, "must be a number between"),
        ("price", "9" * 5000 + ".5", "must be a number between"),
        ("price", "0" * 5000 + "1", None),
        ("price", "-1", "must not be negative"),
        ("price", -0.01, "must not be negative"),
        ("quantity", "2.5", "must be a whole number"),
        ("quantity", "two", "must be a whole number"),
        ("quantity", "1e2", "must be a whole number"),
        ("quantity", "9" * 5000, "must be a number between"),
    ],
)
def test_number_fields_refuse_anything_but_a_number_or_a_plain_decimal_string(field, value, rule):
    product = {"product_id": "p", "price": 1, field: value}
    msg = message("track", event="Order Completed", properties={"products": [product]})
    if rule is None:
        assert mapped(msg)[0]["items"][0][field] == [{"value": 1, "currency": "USD"}]
        return
    with pytest.raises(InvalidJob) as caught:
        segment.to_jobs(msg)
    [problem] = caught.value.problems
    assert problem.field == f"properties.products[0].{field}"
    assert problem.rule.startswith(rule)


def test_page_becomes_a_custom_event(deliver):
    props = {
        "path": "/shoes",
        "referrer": "https://a.example",
        "search": "?q=1",
        "title": "Shoes",
        "url": "https://shop.example/shoes",
        "width": 1024,
    }
    assert deliver(message("page", name="Shoes", properties=props)) == [
        (
            "/v1/events/custom",
            {
                "type": "page",
                "user": USER,
                "properties": {
                    "path": "/shoes",
                    "referrer": "https://a.example",
                    "search": "?q=1",
                    "title": "Shoes",
                    "url": "https://shop.example/shoes",
                    "name": "Shoes",
                },
                "externalEventId": "m-1",
                "occurredAt": STAMP,
            },
        )
    ]


def test_a_message_id_over_128_characters_becomes_a_stable_derived_event_id(deliver):
    """Attentive takes at most 128 characters of externalEventId; a longer messageId is hashed
    (the same id on every resend, so Attentive's dedupe holds) instead of refusing the message."""
    long_id = "ajs-next-" + "7f3a" * 40  # 169 characters
    mapped = segment.to_jobs(message("page", messageId=long_id))
    assert not isinstance(mapped, segment.Skip)
    [event] = mapped
    derived = event["externalEventId"]
    assert derived == segment.external_event_id(long_id) and len(derived) <= 128 and derived != long_id[:128]
    assert segment.to_jobs(message("page", messageId=long_id)) == mapped, "the same on every resend"
    assert segment.external_event_id(long_id + "x") != derived
    exactly = "m" * 128
    assert segment.external_event_id(exactly) == exactly, "an id that fits is kept as sent"
    [(path, body)] = deliver(message("track", event="Coupon Entered", messageId=long_id))
    assert path == "/v1/events/custom" and body["externalEventId"] == derived


ORDER = {
    "affiliation": "web",
    "coupon": "C1",
    "currency": "usd",
    "discount": 2.5,
    "order_id": "o-1",
    "products": [{"product_id": "p-1"}],
    "revenue": 40.0,
    "shipping": 3.0,
    "tax": 1.25,
    "total": 44.25,
    "value": 40.0,
    "checkout_id": "c-1",
    "cart_id": "cart-1",
    "extra": "dropped",
}


@pytest.mark.parametrize(
    ("event", "kept"),
    [
        ("Checkout Started", segment.CHECKOUT_KEYS),
        ("Order Updated", segment.ORDER_KEYS),
        ("Order Refunded", (*segment.ORDER_KEYS, "checkout_id")),
        ("Order Cancelled", segment.ORDER_KEYS),
        ("Cart Viewed", ("cart_id", "currency", "products")),
    ],
)
def test_order_lifecycle_events_keep_their_listed_properties_and_uppercase_currency(deliver, event, kept):
    expected = {k: ORDER[k] for k in kept} | {"currency": "USD"}
    assert deliver(message("track", event=event, properties=ORDER)) == [
        (
            "/v1/events/custom",
            {"type": event, "user": USER, "properties": expected, "externalEventId": "m-1", "occurredAt": STAMP},
        )
    ]


@pytest.mark.parametrize(
    "event",
    [
        "Product List Viewed",
        "Products Searched",
        "Product Clicked",
        "Product Removed",
        "Payment Info Entered",
        "Promotion Clicked",
        "Promotion Viewed",
        "Coupon Entered",
        "Product Added to Wishlist",
        "Subscribed To Newsletter",
    ],
)
def test_other_tracks_pass_their_properties_through(deliver, event):
    props = {"query": "shoes", "nested": {"list": [1, 2]}, "currency": "usd"}
    assert deliver(message("track", event=event, properties=props)) == [
        (
            "/v1/events/custom",
            {"type": event, "user": USER, "properties": props, "externalEventId": "m-1", "occurredAt": STAMP},
        )
    ]


def test_forbidden_property_names_are_refused_or_renamed(producer, redis_server, redis_client, sandbox):
    msg = message("track", event="Odd", properties={"a|b": 1, "ok": {"c,d": 2}})
    with pytest.raises(InvalidJob, match=r"offending names: a\|b"):
        producer.enqueue_segment(msg)
    renaming = make_settings(redis_server.url, sandbox.url, attentive_segment_rename_keys=True)
    from producers.producer import Producer

    assert sent(renaming, Producer(renaming, redis_client), redis_client, sandbox, msg)[0][1]["properties"] == {
        "a_b": 1,
        "ok": {"c_d": 2},
    }


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"properties": {"product_id": "p", "price": 1, "quantity": float("nan")}}, "properties.quantity"),
        ({"properties": {"product_id": "p", "price": 1, "quantity": float("inf")}}, "properties.quantity"),
        ({"properties": {"product_id": "p", "price": float("-inf")}}, "properties.price"),
        ({"properties": {"product_id": "p", "price": 1, "quantity": 10**400}}, "properties.quantity"),
        ({"userId": 10**5000}, "userId"),
        ({"timestamp": "0001-01-01T00:00:00+01:00"}, "timestamp"),
        ({"timestamp": None, "sentAt": "9999-12-31T23:59:59-01:00"}, "sentAt"),
        ({"properties": {"product_id": "p\udcff", "price": 1}}, "properties.product_id"),
    ],
    ids=["quantity-nan", "quantity-inf", "price-inf", "quantity-huge", "userid-huge", "year-1", "year-9999", "utf"],
)
def test_poison_values_are_refused_by_segment_field_not_raised(producer, redis_client, fields, path):
    msg = message("track", event="Product Viewed", **fields)
    with pytest.raises(InvalidJob) as caught:
        producer.prepare_segment(msg)
    assert [p.field for p in caught.value.problems] == [path]
    with pytest.raises(InvalidJob):
        producer.enqueue_segment(msg)
    assert queued_count(redis_client, "attentive") == 0


def test_a_failure_inside_the_mapping_is_refused_as_invalid_and_logged_without_values(producer, monkeypatch, caplog):
    """The backstop: should a rule ever raise something else, the message is refused, not the batch lost."""

    def broken(message: Any, **_: Any) -> Any:
        raise ValueError(f"cannot read {message['userId']}")

    monkeypatch.setattr(segment, "to_jobs", broken)
    with pytest.raises(InvalidJob) as caught:
        producer.prepare_segment(message("track", event="X", userId="secret-user-7"))
    assert [p.field for p in caught.value.problems] == [""] and "failed" in caught.value.problems[0].rule
    assert "ValueError" in caplog.text and "secret-user-7" not in caplog.text
