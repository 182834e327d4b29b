"""Who may use the collector: write keys, failed-attempt limits per address, browser origins.

Kept apart from the HTTP code so each rule can be read (and tested) on its own:

- `WriteKeys` compares a presented key with every configured key in constant time
  (``hmac.compare_digest``, no early exit), so response timing says nothing about how much of
  a key was right, and yields the matched key's account. A refused key is logged as a short
  SHA-256 prefix, never as itself.
- `FailureLimiter` counts refused keys per client address; after ``limit`` failures within
  ``window_s`` the address is answered 429 for ``block_s`` seconds, whatever it sends.
- `Cors` decides browser requests: a request with an ``Origin`` header is refused unless the
  origin is listed in ``COLLECTOR_ALLOWED_ORIGINS``; listed origins get CORS headers.
  CORS is not authentication: it only stops *other sites' pages* from using the collector
  through visitors' browsers. A key used in a page is public; see docs/segment-and-collector.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import SecretStr

log = logging.getLogger("attentive_relay.collector")

CORS_METHODS = "POST, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, Content-Encoding"
CORS_MAX_AGE_S = 7200  # Chromium's cap; Firefox allows a day


def key_fingerprint(key: str) -> str:
    """A short, stable, non-reversible name for a key, fit for logs (12 hex digits of SHA-256)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]


class WriteKeys:
    """The configured write keys and their accounts (`producers.settings.Settings.write_keys`).
    ``account_of(key)`` takes the same time whichever key matches."""

    def __init__(self, keys: Iterable[tuple[SecretStr, str]]) -> None:
        self._keys = tuple((k.get_secret_value().encode(), account) for k, account in keys)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def accounts(self) -> frozenset[str]:
        """The accounts the keys name."""
        return frozenset(account for _, account in self._keys)

    def account_of(self, key: str | None) -> str | None:
        """The account of ``key`` if it is one of the write keys, else None. Never raises,
        whatever ``key`` holds."""
        presented = (key or "").encode("utf-8", "surrogatepass")
        matched = None
        for known, account in self._keys:
            # every key is compared, with no early exit, so the time does not tell which one matched
            same = hmac.compare_digest(presented, known)
            matched = account if same else matched
        return matched if presented else None

    def accepts(self, key: str | None) -> bool:
        """True if ``key`` is one of the write keys."""
        return self.account_of(key) is not None


def presented_key(headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    """The write key a request presents: the HTTP Basic user (Segment's libraries), else the
    body's ``writeKey`` (analytics.js); None when neither is there or readable."""
    auth = headers.get("authorization", "")
    if auth.startswith("Basic "):
        try:
            return base64.b64decode(auth[6:], validate=True).decode().split(":", 1)[0]
        except (ValueError, UnicodeDecodeError):
            return None
    key = body.get("writeKey")
    return key if isinstance(key, str) else None


class FailureLimiter:
    """Refused-key attempts per client address, held in this process's memory.

    After ``limit`` failures within ``window_s`` seconds an address is blocked for
    ``block_s`` seconds. At most ``max_addresses`` are tracked (the oldest are forgotten),
    so a flood from many addresses cannot grow memory without bound. With several collector
    processes each counts on its own: an address is blocked after at most ``limit`` failures
    in each of them.
    """

    def __init__(
        self,
        limit: int = 10,
        window_s: float = 60.0,
        block_s: float = 300.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window_s, self.block_s, self.max_addresses = limit, window_s, block_s, max_addresses
        self._clock = clock
        # address -> (window start, failures in window, blocked until)
        self._seen: OrderedDict[str, tuple[float, int, float]] = OrderedDict()

    def blocked_for(self, address: str) -> float:
        """Seconds until ``address`` may try again; 0 when it is not blocked."""
        entry = self._seen.get(address)
        if entry is None:
            return 0.0
        return max(0.0, entry[2] - self._clock())

    def failed(self, address: str) -> bool:
        """Count one refused attempt from ``address``; True if this one blocks it."""
        now = self._clock()
        start, count, until = self._seen.pop(address, (now, 0, 0.0))
        if now - start > self.window_s:
            start, count = now, 0
        count += 1
        blocks = count >= self.limit and until <= now
        if blocks:
            until, start, count = now + self.block_s, now, 0
        self._seen[address] = (start, count, until)
        while len(self._seen) > self.max_addresses:
            self._seen.popitem(last=False)
        return blocks


class Cors:
    """The browser policy: which ``Origin`` values may call, and the headers they get."""

    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = frozenset(allowed)

    def allows(self, origin: str) -> bool:
        return origin.rstrip("/") in self.allowed

    def headers(self, origin: str, preflight: bool = False) -> list[tuple[bytes, bytes]]:
        """CORS response headers for an allowed ``origin`` (echoed, never ``*``)."""
        headers = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        if preflight:
            headers += [
                (b"access-control-allow-methods", CORS_METHODS.encode()),
                (b"access-control-allow-headers", CORS_HEADERS.encode()),
                (b"access-control-max-age", str(CORS_MAX_AGE_S).encode()),
            ]
        return headers
