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

import atexit
import json
import logging
import logging.handlers
import os
import queue
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


class _Enqueue(logging.handlers.QueueHandler):
    """Hands records to the writer thread as they are: formatting happens there."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg, record.args = record.getMessage(), None  # arguments may not outlive the call
        return record


_listener: logging.handlers.QueueListener | None = None


def configure(level: int | str = logging.INFO) -> None:
    """Root logger to stderr, JSON or text. Called from Celery's ``setup_logging`` signal.

    Records go through a queue to one writer thread: the worker's sender threads log an
    attempt each, and contending for the stream handler's lock cost more CPU than writing."""
    global _listener
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if wants_json()
        else logging.Formatter("[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s")
    )
    stop()
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    enqueue = _Enqueue(records)
    _listener = logging.handlers.QueueListener(records, handler)
    _listener.start()
    root = logging.getLogger()
    root.handlers[:] = [enqueue]
    root.setLevel(level)
    _writers.append((enqueue, handler))
    # httpx logs every request URL at INFO (with credentials, if a URL carries them), doubling
    # the volume; the delivery's own line already records each attempt.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if os.environ.get("ATTENTIVE_LOG_CELERY_TASKS", "").lower() not in ("1", "true", "yes"):
        # The delivery's own line says everything about an attempt; Celery's "received" and
        # "succeeded" lines would triple the log volume (and its CPU) for nothing new.
        for name in ("celery.app.trace", "celery.worker.strategy"):
            logging.getLogger(name).setLevel(logging.WARNING)


def stop() -> None:
    """Write what is queued and stop the writer thread (before a process exits)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


#: The queue handlers configured in this process and their writers, to restart after a fork.
_writers: list[tuple[logging.handlers.QueueHandler, logging.Handler]] = []


def _restart_after_fork() -> None:
    # A forked child (a prefork pool process) has the queue but not the writer thread.
    global _listener
    if not _writers:
        return
    enqueue, handler = _writers[-1]
    _writers[:] = [(enqueue, handler)]
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    enqueue.queue = records
    _listener = logging.handlers.QueueListener(records, handler)
    _listener.start()


atexit.register(stop)
os.register_at_fork(after_in_child=_restart_after_fork)
