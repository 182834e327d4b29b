"""The sandbox's stand-in for Yotpo's "create or update custom customer event".

``POST`` `worker.destinations.yotpo.PATH` (the store id in the path) answers as Yotpo does:

- the access token comes from the ``X-Yotpo-Token`` header or an ``access_token`` /
  ``utoken`` query parameter; with stores configured (``Sandbox(yotpo_stores={store: token})``
  or ``POST /__sandbox/config {"yotpo_stores": {...}}``) an unknown store is 404 and a wrong
  or missing token 401; without any, every store accepts any non-empty token;
- 5 requests per second per store (``yotpo_rate`` in the config), a fixed one-second window:
  beyond it 429 with ``RateLimit-Remaining`` and ``RateLimit-Reset`` (also sent on every answer);
- the body is checked with the relay's own rules (`producers.job.validation.parse_job` of a
  ``yotpo_custom_event``): 400 with ``{"errors": [{"field", "message"}]}`` listing every problem;
- faults (``POST /__sandbox/faults``, optionally with a ``type`` or a ``path`` holding the store
  id) answer their status;
- success: 200 with the event id; an event sent again with the same ``event_id`` overwrites the
  stored one (`SandboxState.yotpo_events`), as Yotpo's upsert does.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from producers.errors import InvalidJob
from producers.job.validation import parse_job
from producers.job.yotpo import YotpoCustomEvent
from worker.destinations.yotpo import PATH

if TYPE_CHECKING:
    from worker.sandbox.state import SandboxState

_PATH = re.compile("^" + re.escape(PATH).replace(re.escape("{store_id}"), "([^/]+)") + "$")

Answer = tuple[int, Any, dict[str, str], str]


def store_of(path: str) -> str | None:
    """The store id in a Yotpo custom-event path, None for any other path."""
    found = _PATH.match(path)
    return found.group(1) if found else None


def answer(state: SandboxState, store: str, token: str | None, body: Any) -> Answer:
    """(status, payload, headers, note) for one custom event sent to ``store`` with ``token``."""
    with state.lock:
        stores = dict(state.yotpo_stores)
    if stores and store not in stores:
        return 404, {"status": {"code": 404, "message": "store not found"}}, {}, "no such store"
    if not token or (stores and stores[store] != token):
        return 401, {"status": {"code": 401, "message": "invalid access token"}}, {}, "bad token"
    allowed, _, remaining = state.take(f"yotpo-store:{store}", PATH, state.yotpo_rate)
    headers = {"RateLimit-Remaining": str(remaining), "RateLimit-Reset": "1"}
    if not allowed:
        return 429, {"status": {"code": 429, "message": "too many requests"}}, headers, "rate limited"
    if not isinstance(body, dict):
        return 400, {"errors": [{"field": "", "message": "body must be a JSON object"}]}, headers, "invalid"
    fault = state.fault_for(PATH.format(store_id=store), body)
    if fault is not None:
        return fault.answer(headers)
    try:
        job = parse_job({**body, "kind": "yotpo_custom_event"}, state.settings, datetime.now(UTC), at_enqueue=False)
    except InvalidJob as err:
        errors = [{"field": p.field, "message": p.rule} for p in err.problems]
        return 400, {"errors": errors}, headers, "invalid"
    assert isinstance(job, YotpoCustomEvent)  # the kind set above picks the model
    event_id = str(job.event_id)
    with state.lock:
        replaced = (store, event_id) in state.yotpo_events
        state.yotpo_events[(store, event_id)] = body
    return 200, {"event_id": event_id}, headers, "updated" if replaced else "accepted"
