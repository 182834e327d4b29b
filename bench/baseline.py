"""The baseline: a Celery task written the plain way, for the benchmark to compare against.

It posts each job with ``httpx.post`` (variant "plain") or a per-process ``httpx.Client``
(variant "tuned", ``BASELINE_VARIANT=tuned``), and relies on Celery's built-in ``rate_limit`` (which is
per worker instance) and ``autoretry_for`` with ``retry_backoff`` (countdown retries held in
the broker). Job bodies travel as task arguments. Nothing here is used by attentive-relay.
"""

from __future__ import annotations

import os

import httpx
from celery import Celery

app = Celery("baseline", broker=os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue="baseline",
    broker_connection_retry_on_startup=True,
)

BASE_URL = os.environ.get("ATTENTIVE_BASE_URL", "https://api.attentivemobile.com")
TOKEN = os.environ.get("ATTENTIVE_API_TOKEN", "")
RATE_LIMIT = os.environ.get("BASELINE_RATE_LIMIT") or None
#: "tuned" shares one pooled httpx.Client per process, as a careful author would.
SHARED = os.environ.get("BASELINE_VARIANT") == "tuned"
_client = httpx.Client(timeout=10) if SHARED else None


@app.task(
    name="baseline.deliver", rate_limit=RATE_LIMIT, autoretry_for=(httpx.HTTPError,), retry_backoff=True, max_retries=5
)
def deliver(path: str, body: dict) -> None:
    post = _client.post if _client is not None else httpx.post
    response = post(BASE_URL + path, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    response.raise_for_status()
