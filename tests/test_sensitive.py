"""The sensitive-data guard: cards (network range + Luhn), SSNs, telling names; never echoing values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from producers.errors import InvalidJob
from producers.sensitive import card_network, luhn_ok, scan
from producers.settings import Settings
from producers.validation import parse_job

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("number", "network"),
    [
        ("4111111111111111", "visa"),
        ("5555555555554444", "mastercard"),
        ("2223003122003222", "mastercard"),
        ("378282246310005", "amex"),
        ("6011111111111117", "discover"),
        ("3530111333300000", "jcb"),
        ("30569309025904", "diners"),
        ("6200000000000005", "unionpay"),
    ],
)
def test_test_card_numbers_of_every_network_are_recognised(number, network):
    assert luhn_ok(number) and card_network(number) == network
    assert [p.field for p in scan({"note": f"paid with {number}"})] == ["properties.note"]


@pytest.mark.parametrize("value", ["4111 1111 1111 1111", "4111-1111-1111-1111", 4111111111111111])
def test_grouped_and_integer_card_numbers_are_refused(value):
    assert scan({"v": value})[0].rule.startswith("looks like sensitive data (payment_card)")


@pytest.mark.parametrize(
    "value",
    [
        "4111111111111112",  # fails Luhn
        "5634987654321",  # a 13-digit order id: no network issues 13-digit numbers starting 5
        "order 1234567890123456",  # Luhn-valid? no; and 1 is no network's prefix
        "415-555-2671",
        "19.99",
        "2026-11-23T12:00:00Z",
        True,
    ],
)
def test_ordinary_values_pass(value):
    assert scan({"v": value}) == []


def test_ssn_needs_its_usual_formatting_and_valid_ranges():
    assert scan({"a": "123-45-6789", "b": "123 45 6789"}) and len(scan({"a": "123-45-6789", "b": "123 45 6789"})) == 2
    assert (
        scan({"a": "123456789", "b": "000-12-3456", "c": "666-12-3456", "d": "123-00-4567", "e": "123-45 6789"}) == []
    )


def test_nested_values_and_telling_names_are_found_by_path():
    problems = scan({"customer": {"cards": ["x", "4111111111111111"]}, "SSN": "n/a", "credit_card_number": ""})
    assert {p.field for p in problems} == {
        "properties.customer.cards[1]",
        "properties.SSN",
        "properties.credit_card_number",
    }


def test_extra_patterns_extend_the_guard():
    problems = scan({"doc": "passport X12345678"}, {"passport": r"\b[A-Z][0-9]{8}\b"})
    assert problems[0].rule == "looks like sensitive data (passport), which Attentive's terms forbid"


def test_the_guard_refuses_jobs_at_enqueue_without_echoing_the_value_and_can_be_turned_off():
    job = {"kind": "custom_attributes", "user": {"email": "a@example.com"}, "properties": {"card": "4111111111111111"}}
    with pytest.raises(InvalidJob) as caught:
        parse_job(job, Settings(), NOW, at_enqueue=True)
    assert [p.field for p in caught.value.problems] == ["properties.card"]
    assert "4111" not in str(caught.value)
    assert parse_job(job, Settings(attentive_sensitive_guard=False), NOW, at_enqueue=True)


def test_patterns_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("ATTENTIVE_SENSITIVE_PATTERNS", '{"iban": "[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}"}')
    event = {
        "kind": "custom_event",
        "type": "Refund",
        "user": {"email": "a@example.com"},
        "properties": {"account": "DE89370400440532013000"},
    }
    with pytest.raises(InvalidJob, match=r"properties\.account: looks like sensitive data \(iban\)"):
        parse_job(event, Settings(), NOW, at_enqueue=True)
