"""The Celery side of attentive-relay: ``celery -A worker worker`` finds the app here.

The app is built on first access, so the CLI (``worker.cli``) can report bad settings
cleanly and start without importing Celery when it doesn't need it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "celery"]


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from worker import tasks  # noqa: F401  (registers the task on the app)
        from worker.app import app

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
