"""The freshness rule: Attentive silently drops events that happened too long ago.

An event whose ``occurredAt`` is older than the window (12 hours by default) is accepted
with a 200 but triggers no Journey, so sending it wastes it without telling anyone. Events
(custom and eCommerce) are therefore checked at enqueue, before each attempt, and before
scheduling a retry. Attributes and identity calls have no ``occurredAt`` and never go stale.
"""

from __future__ import annotations

from datetime import datetime, timedelta

EVENT_KINDS = frozenset({"custom_event", "product_view", "add_to_cart", "purchase"})


def expires_at(occurred_at: datetime, window_s: float) -> datetime:
    """The last moment at which the event is still worth sending."""
    return occurred_at + timedelta(seconds=window_s)


def is_stale(occurred_at: datetime | None, now: datetime, window_s: float) -> bool:
    return occurred_at is not None and now > expires_at(occurred_at, window_s)


def age_s(occurred_at: datetime, now: datetime) -> float:
    return (now - occurred_at).total_seconds()
