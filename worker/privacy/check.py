"""The scheduled check: files the deletion requests still pending and checks the filed ones.

Every worker runs one `PrivacyCheck` thread next to its promoter (`worker.app`), as does
``attentive-relay scheduler``. It is a thread of its own, not a step of the promoter's pass:
a call to Attentive may take up to ``ATTENTIVE_TIMEOUT_S``, and due retries must not wait for
it. Any number may run: a request is taken by one process at a time
(`worker.privacy.store.RequestStore.claim`).
"""

from __future__ import annotations

import logging

import redis

from worker.background import Background
from worker.privacy.forwarder import Forwarder

log = logging.getLogger("attentive_relay.privacy")


class PrivacyCheck(Background):
    """Runs `Forwarder.run_due` every ``interval_s`` (at once again while requests are due) in
    a daemon thread until stopped. A Redis error or a crash skips a pass, never ends the thread."""

    thread_name = "attentive-privacy-check"

    def __init__(self, forwarder: Forwarder, interval_s: float = 1.0) -> None:
        super().__init__()
        self.forwarder = forwarder
        self.interval_s = interval_s

    def run_forever(self) -> None:
        failures = 0
        while not self._stop.is_set():
            busy = False
            try:
                busy = self.forwarder.run_due() > 0
                failures = 0
            except redis.RedisError as exc:
                failures += 1
                log.warning("privacy check cannot reach Redis (%s); retrying", type(exc).__name__)
            except Exception:  # a bad record must not end every later check
                failures += 1
                log.exception("privacy check pass failed; retrying")
            if not busy:
                self._stop.wait(min(30.0, self.interval_s * (2 ** min(failures, 5))))
