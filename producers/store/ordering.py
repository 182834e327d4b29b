"""Identity before the events that need it: per-customer ordering only where it matters.

Attentive can attribute an event whose user is known only by a ``clientUserId`` or a custom
identifier after an identity call has linked that id to a phone number or an email. So when
such an event is queued while an ``identity`` job for the same id (and the same account) has
not ended yet (queued, scheduled for a retry or in flight), the event waits: state
``waiting``, no broker message, listed under the identity job (`producers.store.keys.waiters`).
When the identity job ends, delivered or dead-lettered, its waiters are queued: the first
few by the Lua script that records the end, the rest by the promoters in short scripts
(`worker.jobstore`), so no script grows with the list. Nothing else waits: an event with a
phone or an email, or with an id no pending identity job links, is queued at once, and no
customer's events wait for another customer's.

An identity job takes at most ``ATTENTIVE_MAX_WAITERS`` waiters; a job past that is queued
at once, unordered, and counted (``waiters_over_cap``): that many events for one id while its
identity call is pending means an id many people share, which one call cannot link anyway.

The link from an id to its identity job is a marker key named by a keyed hash of the account
and the id (the erasure index's key, `producers.store.erasure`), so Redis key names never show an
id. It expires with the job retention. Identity jobs with waiters are indexed
(`producers.store.keys.AWAITED`): if one disappears without ending (erased, expired), the
reconciler finds it within about ``ATTENTIVE_ORPHAN_S`` and its waiters are queued.

Which jobs wait: custom events, eCommerce events and custom attributes whose ``user`` has no
``phone`` and no ``email`` but has ``externalIdentifiers``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from producers.store import keys

#: Kinds whose ``user`` may be known only by external identifiers.
USER_KINDS = frozenset({"custom_event", "custom_attributes", "product_view", "add_to_cart", "purchase"})


def _ids(external: Any) -> list[str]:
    if not isinstance(external, dict):
        return []
    found = []
    client_user_id = external.get("clientUserId")
    if isinstance(client_user_id, str) and client_user_id:
        found.append("clientUserId\x00" + client_user_id)
    for custom in external.get("customIdentifiers") or ():
        if isinstance(custom, dict) and isinstance(custom.get("name"), str) and isinstance(custom.get("value"), str):
            found.append(f"custom\x00{custom['name']}\x00{custom['value']}")
    return found


def links(job: dict[str, Any]) -> list[str]:
    """The external ids an ``identity`` job links to a person (none for other kinds)."""
    if job.get("kind") != "identity":
        return []
    return _ids({"clientUserId": job.get("clientUserId"), "customIdentifiers": job.get("customIdentifiers")})


def needs(job: dict[str, Any]) -> list[str]:
    """The external ids a job depends on: those of a user with no phone and no email."""
    if job.get("kind") not in USER_KINDS:
        return []
    user = job.get("user")
    if not isinstance(user, dict) or user.get("phone") or user.get("email"):
        return []
    return _ids(user.get("externalIdentifiers"))


def marker(key: bytes, account: str, external_id: str) -> str:
    """The Redis key naming the pending identity job that links ``external_id`` in ``account``."""
    digest = hmac.new(key, f"{account}\x00{external_id}".encode("utf-8", "surrogatepass"), hashlib.sha256)
    return keys.identity(digest.hexdigest())
