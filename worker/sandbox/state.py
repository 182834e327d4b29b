"""What one sandbox server holds: the tokens and limits it was given, the requests it saw, its
rate windows, the faults injected through ``/__sandbox/faults``, and the GraphQL error answer
a fault may give.

The endpoint modules (`worker.sandbox.graphql`, `worker.sandbox.yotpo`,
`worker.sandbox.privacy`) answer from this state and the server (`worker.sandbox.server`) owns
it; kept apart so that the endpoints need not import the server, which imports them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from producers.settings import Settings

#: Attentive's published per-endpoint limits where they differ from the default.
SPECIAL_LIMITS = {"/v1/identity-resolution/user-identifiers": 10}


def error(code: str, message: str, **extensions: Any) -> dict[str, Any]:
    """A GraphQL answer holding one error."""
    return {"data": None, "errors": [{"message": message, "extensions": {"code": code, **extensions}}]}


@dataclass
class Fault:
    status: int = 200
    times: int = 1
    type: str | None = None
    path: str | None = None
    retry_after: float | None = None
    delay_ms: int = 0
    graphql_code: str | None = None
    """On ``/v1/graphql``: answer this code as a GraphQL error inside a 200 (``status`` unused)."""
    message: str | None = None

    def matches(self, path: str, body: dict[str, Any]) -> bool:
        return (self.path is None or self.path == path) and (self.type is None or body.get("type") == self.type)

    def answer(self, headers: dict[str, str]) -> tuple[int, Any, dict[str, str], str]:
        """(status, payload, headers, note): what the faulty endpoint answers."""
        time.sleep(self.delay_ms / 1000)
        if self.retry_after is not None:
            headers["Retry-After"] = f"{self.retry_after:g}"
        if self.graphql_code is not None:
            message = self.message or f"injected {self.graphql_code}"
            return 200, error(self.graphql_code, message), headers, "fault"
        return self.status, {"status": self.status, "error": "injected"}, headers, "fault"


@dataclass
class SandboxState:
    token: str | None
    """The Bearer token accepted (None: any token)."""
    more_tokens: frozenset[str] = frozenset()
    """Other accounts' tokens accepted too."""
    rate: int = 150
    fail_rate: float = 0.0
    latency_ms: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    windows: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)
    yotpo_rate: int = 5
    yotpo_stores: dict[str, str] = field(default_factory=dict)
    """Yotpo store id -> access token; empty: every store takes any token."""
    yotpo_events: dict[tuple[str, str], Any] = field(default_factory=dict)
    """The last body received per (store id, event_id)."""
    privacy: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Deletion requests filed, by id (`worker.sandbox.privacy`)."""
    privacy_delay_s: float = 0.0
    """How long after filing a deletion request reads as processed."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    settings: Settings = field(default_factory=Settings)

    def take(self, token: str, path: str, limit: int | None = None) -> tuple[bool, int, int]:
        """Count one request in the current second: (allowed, limit, remaining)."""
        limit = limit or SPECIAL_LIMITS.get(path, self.rate)
        second = int(time.time())
        with self.lock:
            start, used = self.windows.get((token, path), (second, 0))
            if start != second:
                start, used = second, 0
            used += 1
            self.windows[(token, path)] = (start, used)
        return used <= limit, limit, max(0, limit - used)

    def fault_for(self, path: str, body: dict[str, Any]) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and fault.matches(path, body):
                    fault.times -= 1
                    return fault
        return None
