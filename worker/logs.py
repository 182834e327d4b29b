"""Worker logging: JSON lines when stderr is not a terminal, readable text when it is.

Set ``ATTENTIVE_LOG_FORMAT=json`` or ``text`` to choose. Celery's per-task "received" and
"succeeded" lines are left out (``ATTENTIVE_LOG_CELERY_TASKS=true`` keeps them): the delivery
logs one line per attempt with everything they said. Delivery log records carry
``job_id``, ``kind``, ``endpoint``, ``attempt``, ``status``, ``outcome`` and ``reason`` as
fields (in JSON, keys of their own). Nothing logged holds a phone number, an email, a
property value or the token: records name jobs by id, and exception messages from our code
never carry values.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

FIELDS = ("job_id", "kind", "endpoint", "attempt", "status", "outcome", "reason")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            if hasattr(record, name):
                data[name] = getattr(record, name)
        if record.exc_info and record.exc_info[0] is not None:
            data["exc_type"] = record.exc_info[0].__name__
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def wants_json() -> bool:
    choice = os.environ.get("ATTENTIVE_LOG_FORMAT", "").lower()
    return choice == "json" or (choice != "text" and not sys.stderr.isatty())


def configure(level: int | str = logging.INFO) -> None:
    """Root logger to stderr, JSON or text. Called from Celery's ``setup_logging`` signal."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if wants_json()
        else logging.Formatter("[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request URL at INFO (with credentials, if a URL carries them), doubling
    # the volume; the delivery's own line already records each attempt.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if os.environ.get("ATTENTIVE_LOG_CELERY_TASKS", "").lower() not in ("1", "true", "yes"):
        # The delivery's own line says everything about an attempt; Celery's "received" and
        # "succeeded" lines would triple the log volume (and its CPU) for nothing new.
        for name in ("celery.app.trace", "celery.worker.strategy"):
            logging.getLogger(name).setLevel(logging.WARNING)
