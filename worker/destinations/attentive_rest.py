"""Attentive's REST API: one endpoint per kind, a Bearer token per account.

Rules: the job models (`producers.job.models`) are Attentive's own shapes, checked at enqueue and
again before each attempt. Rate limits: one bucket per token and endpoint (the lane is the
job's kind), at Attentive's published limits (150/s, identity 10/s) unless configured
(`attentive.rate_for`). Outcomes: classified by HTTP status alone (`classify`, the status
reading shared with Attentive GraphQL). Host, token and sending are `attentive.AttentiveApi`'s.
"""

from __future__ import annotations

import httpx
from pydantic import BaseModel

from producers.accounts import Account
from producers.job.models import COUNTED_KINDS, EVENT_PATHS, attentive_body
from producers.settings import Settings
from worker.destinations.attentive import AttentiveApi, classify
from worker.destinations.base import Bucket, Outcome

__all__ = ["AttentiveRest", "classify"]


class AttentiveRest:
    """Thread-safe; one per worker process."""

    name = "attentive_rest"

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        self.api = AttentiveApi(settings, transport)

    def close(self) -> None:
        self.api.close()

    def endpoint(self, job: BaseModel) -> str:
        return EVENT_PATHS[job.kind]  # type: ignore[attr-defined]

    def bucket(self, job: BaseModel, account: Account) -> Bucket:
        return self.api.bucket(job.kind, account)  # type: ignore[attr-defined]

    def deliver(self, job: BaseModel, account: Account) -> Outcome:
        """POST the job's Attentive body to its kind's endpoint. Kinds Attentive counts on each
        send (`COUNTED_KINDS`) end `Uncertain`, not retried, when the answer is lost."""
        counted = job.kind in COUNTED_KINDS  # type: ignore[attr-defined]
        return self.api.send(self.endpoint(job), attentive_body(job), account, classify, counted=counted)
