"""The Celery side of attentive-relay: ``celery -A worker worker`` finds the app here."""

from worker import tasks as _tasks  # noqa: F401  (registers the task)
from worker.app import app

celery = app
__all__ = ["app", "celery"]
