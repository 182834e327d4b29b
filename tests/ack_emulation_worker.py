"""The relay's Celery app with kombu's ack emulation on (kombu's default, the relay's until 2026-12).

``celery -A ack_emulation_worker worker`` (with this directory on PYTHONPATH) runs the same
tasks and settings as ``-A worker``, except that kombu keeps its ``unacked`` hash and restore
sweep, so broker tests can cover both transport configurations.
"""

from __future__ import annotations

import worker.tasks  # noqa: F401  (registers the task on the app)
from worker.app import app, settings

app.conf.broker_transport_options = {
    **app.conf.broker_transport_options,
    "ack_emulation": True,
    "visibility_timeout": int(settings.attentive_lease_s + 30),
}

__all__ = ["app"]
