"""Segment messages in the shapes RudderStack's and Segment's own destination fixtures use.

Issue 10: their test cases, run against this relay, found numbers sent as strings, numeric
Shopify user ids and purchases without an order id. Each message here is mapped with
`segment.to_jobs`, compared field by field, and then validated as the producer would.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from producers.job.validation import job_json, parse_job
from producers.segment import mapping as segment
from producers.settings import Settings

from conftest import mapped

NOW = datetime.now(UTC).replace(microsecond=0)
SENT = (NOW - timedelta(minutes=2)).isoformat().replace("+00:00", "Z")
STAMP = (NOW - timedelta(minutes=3)).isoformat().replace("+00:00", "Z")
SHOPIFY_ID = 7182391234567
EMAIL = "jane.kim@example.com"

CONTEXT = {
    "ip": "203.0.113.7",
    "library": {"name": "analytics.js", "version": "4.1.0"},
    "locale": "en-US",
    "page": {"path": "/products/monopoly", "referrer": "", "title": "Monopoly", "url": "https://shop.example.com/"},
    "traits": {"email": EMAIL, "phone": "+1 415-555-2671"},
    "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 Safari/605.1.15",
}
RUDDER_CONTEXT = {
    "app": {"build": "1.0.0", "name": "RudderLabs JavaScript SDK", "namespace": "com.rudderlabs.javascript"},
    "library": {"name": "RudderLabs JavaScript SDK", "version": "3.0.0"},
    "traits": {"email": EMAIL},
    "os": {"name": "", "version": ""},
    "screen": {"density": 2},
}
USER = {"phone": "+1 415-555-2671", "email": EMAIL, "externalIdentifiers": {"clientUserId": str(SHOPIFY_ID)}}


def envelope(**fields: Any) -> dict[str, Any]:
    """The fields every analytics.js message carries around its type-specific ones."""
    return {
        "anonymousId": "23adfd82-aa0f-45a7-a756-24f2a7a4c895",
        "channel": "client",
        "context": CONTEXT,
        "integrations": {"All": True},
        "messageId": "ajs-next-1714035456789-5c0a81c4-0b6e-4a41-9d69-e1f8e5c0e4a2",
        "originalTimestamp": STAMP,
        "receivedAt": SENT,
        "sentAt": SENT,
        "timestamp": STAMP,
        "userId": str(SHOPIFY_ID),
        **fields,
    }


def validated(jobs: list[dict[str, Any]] | segment.Skip) -> list[dict[str, Any]]:
    """The jobs as the producer stores them: each must pass validation with the default settings."""
    assert isinstance(jobs, list)
    return [json.loads(job_json(parse_job(job, Settings(), NOW, at_enqueue=True))) for job in jobs]


MONOPOLY = {
    "productId": "507f1f77bcf86cd799439011",
    "productVariantId": "200 pieces",
    "price": [{"value": 18.99, "currency": "USD"}],
    "name": "Monopoly: 3rd Edition",
    "productImage": "https://www.example.com/product/path.jpg",
    "productUrl": "https://www.example.com/product/path",
    "quantity": 1,
}


def test_product_viewed_from_segments_spec_with_string_numbers():
    msg = envelope(
        type="track",
        event="Product Viewed",
        properties={
            "product_id": "507f1f77bcf86cd799439011",
            "sku": "G-32",
            "category": "Games",
            "name": "Monopoly: 3rd Edition",
            "brand": "Hasbro",
            "variant": "200 pieces",
            "price": "18.99",
            "quantity": "1",
            "coupon": "MAYDEALS",
            "currency": "usd",
            "position": 3,
            "value": "18.99",
            "url": "https://www.example.com/product/path",
            "image_url": "https://www.example.com/product/path.jpg",
        },
    )
    [job] = mapped(msg)
    assert job == {"kind": "product_view", "user": USER, "items": [MONOPOLY], "occurredAt": STAMP}
    [stored] = validated([job])
    assert stored["user"]["phone"] == "+14155552671"
    assert stored["items"][0]["price"] == [{"value": 18.99, "currency": "USD"}]
    assert stored["items"][0]["quantity"] == 1


def test_product_added_from_rudderstacks_fixture_with_a_whole_price_string():
    msg = {
        "anonymousId": "f5a2b1e0-8d42-4a7e-9b44-1f5c3a7e9d10",
        "channel": "web",
        "context": RUDDER_CONTEXT,
        "event": "Product Added",
        "integrations": {"All": True},
        "messageId": "0d3e7d3a-96c4-4b43-8e87-6a1c8a1d2b55",
        "originalTimestamp": STAMP,
        "properties": {
            "cart_id": "skdjsidjsdkdj29j",
            "product_id": "622c6f5d5cf86a4c77358033",
            "sku": "8472-998-0112",
            "category": "Games",
            "name": "Cones of Dunshire",
            "brand": "Wyatt Games",
            "variant": "exapansion pack",
            "price": " 49 ",
            "quantity": "5",
            "coupon": "APPARELSALE",
            "position": "1",
            "url": "https://www.website.com/product/path",
            "image_url": "https://www.website.com/product/path.webp",
        },
        "sentAt": SENT,
        "type": "track",
        "userId": SHOPIFY_ID,
    }
    [job] = mapped(msg)
    user = {"email": EMAIL, "externalIdentifiers": {"clientUserId": "7182391234567"}}
    assert job == {
        "kind": "add_to_cart",
        "user": user,
        "items": [
            {
                "productId": "622c6f5d5cf86a4c77358033",
                "productVariantId": "exapansion pack",
                "price": [{"value": 49, "currency": "USD"}],
                "name": "Cones of Dunshire",
                "productImage": "https://www.website.com/product/path.webp",
                "productUrl": "https://www.website.com/product/path",
                "quantity": 5,
            }
        ],
        "occurredAt": STAMP,  # no timestamp: originalTimestamp is next
    }
    assert validated([job])[0]["items"][0]["price"][0]["value"] == 49


ORDER_PRODUCTS = [
    {
        "product_id": "507f1f77bcf86cd799439011",
        "sku": "45790-32",
        "name": "Monopoly: 3rd Edition",
        "price": "19",
        "quantity": "1",
        "category": "Games",
        "url": "https://www.example.com/product/path",
        "image_url": "https:///www.example.com/product/path.jpg",
    },
    {
        "product_id": "505bd76785ebb509fc183733",
        "sku": "46493-32",
        "name": "Uno Card Game",
        "price": "3.50",
        "quantity": "2.0",
        "category": "Games",
    },
]
ORDER_ITEMS = [
    {
        "productId": "507f1f77bcf86cd799439011",
        "productVariantId": "507f1f77bcf86cd799439011",
        "price": [{"value": 19, "currency": "USD"}],
        "name": "Monopoly: 3rd Edition",
        "productImage": "https:///www.example.com/product/path.jpg",
        "productUrl": "https://www.example.com/product/path",
        "quantity": 1,
    },
    {
        "productId": "505bd76785ebb509fc183733",
        "productVariantId": "505bd76785ebb509fc183733",
        "price": [{"value": 3.5, "currency": "USD"}],
        "name": "Uno Card Game",
        "quantity": 2,
    },
]


def test_order_completed_from_segments_spec_with_string_numbers():
    msg = envelope(
        type="track",
        event="Order Completed",
        userId=SHOPIFY_ID,
        properties={
            "checkout_id": "fksdjfsdjfisjf9sdfjsd9f",
            "order_id": "50314b8e9bcf000000000000",
            "affiliation": "Google Store",
            "total": "27.50",
            "subtotal": "22.50",
            "revenue": "25.00",
            "shipping": "3",
            "tax": "2",
            "discount": "2.5",
            "coupon": "hasbros",
            "currency": "USD",
            "products": ORDER_PRODUCTS,
        },
    )
    [job] = mapped(msg)
    assert job == {
        "kind": "purchase",
        "user": USER,
        "items": ORDER_ITEMS,
        "orderId": "50314b8e9bcf000000000000",
        "occurredAt": STAMP,
    }
    [stored] = validated([job])
    assert stored["orderId"] == "50314b8e9bcf000000000000"
    assert [i["price"][0]["value"] for i in stored["items"]] == [19, 3.5]


def test_order_completed_without_order_id_is_a_purchase_without_one():
    msg = envelope(type="track", event="Order Completed", properties={"currency": "usd", "products": ORDER_PRODUCTS})
    [job] = mapped(msg)
    assert job == {"kind": "purchase", "user": USER, "items": ORDER_ITEMS, "occurredAt": STAMP}
    assert "orderId" not in validated([job])[0]


def test_identify_with_a_numeric_shopify_user_id_and_traits_email():
    msg = envelope(
        type="identify",
        userId=SHOPIFY_ID,
        context={"library": {"name": "analytics-python", "version": "2.3.2"}},
        traits={
            "email": EMAIL,
            "firstName": "Jane",
            "lastName": "Kim",
            "orders_count": 3,
            "address": {"city": "San Francisco", "country": "US"},
            "createdAt": "2023-11-02T17:41:10Z",
        },
    )
    identity, attributes = mapped(msg)
    user = {"email": EMAIL, "externalIdentifiers": {"clientUserId": "7182391234567"}}
    assert identity == {"kind": "identity", "email": EMAIL, "clientUserId": "7182391234567"}
    assert attributes == {
        "kind": "custom_attributes",
        "user": user,
        "properties": {"firstName": "Jane", "lastName": "Kim", "orders_count": 3, "createdAt": "2023-11-02T17:41:10Z"},
    }
    assert [j["kind"] for j in validated([identity, attributes])] == ["identity", "custom_attributes"]


def test_a_user_id_that_is_a_phone_number_is_not_sent_as_client_user_id():
    msg = envelope(type="track", event="Product Viewed", userId="+1 (415) 555-2671", context={}, properties={})
    assert segment.to_jobs(msg) == segment.Skip("no_identifier")


def test_page_from_segments_spec():
    msg = envelope(
        type="page",
        name="Home",
        userId="97980cfea0067",
        properties={
            "title": "Welcome | Initech",
            "url": "http://www.initech.com",
            "path": "/",
            "referrer": "https://www.google.com/",
            "search": "",
            "keywords": ["initech", "software"],
        },
    )
    [job] = mapped(msg)
    assert job == {
        "kind": "custom_event",
        "type": "page",
        "user": {"phone": "+1 415-555-2671", "email": EMAIL, "externalIdentifiers": {"clientUserId": "97980cfea0067"}},
        "properties": {
            "path": "/",
            "referrer": "https://www.google.com/",
            "search": "",
            "title": "Welcome | Initech",
            "url": "http://www.initech.com",
            "name": "Home",
        },
        "occurredAt": STAMP,
        "externalEventId": "ajs-next-1714035456789-5c0a81c4-0b6e-4a41-9d69-e1f8e5c0e4a2",
    }
    [stored] = validated([job])
    assert stored["type"] == "page" and stored["externalEventId"] == job["externalEventId"]
