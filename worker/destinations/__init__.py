"""Where jobs go: one module per destination, each with its rules, client, rate limits and
outcome classification. The delivery path (`worker.delivery`) is the same for all of them.

    kind                  destination            module
    custom_event          Attentive REST         attentive_rest   (or Attentive GraphQL,
                                                 attentive_graphql, when
                                                 ATTENTIVE_CUSTOM_EVENTS_API=graphql)
    custom_attributes,
    product_view,
    add_to_cart,
    purchase, identity    Attentive REST         attentive_rest
    yotpo_custom_event    Yotpo SMS & Email      yotpo

Both Attentive destinations use `attentive.AttentiveApi` (host, token, rate buckets, sending).

`Destinations` builds each client once per worker process (with an optional injected httpx
transport for tests) and picks the one for a job. `account_of` finds the job's credentials.
"""

from __future__ import annotations

import httpx
from pydantic import BaseModel

from producers import accounts
from producers.accounts import Account
from producers.errors import InvalidJob, Problem
from producers.settings import Settings
from worker.destinations.attentive_graphql import AttentiveGraphQL
from worker.destinations.attentive_rest import AttentiveRest
from worker.destinations.base import Bucket, Destination, Outcome
from worker.destinations.yotpo import Yotpo

__all__ = ["Bucket", "Destination", "Destinations", "Outcome", "account_of"]


def account_of(job: BaseModel, settings: Settings) -> Account:
    """The account that delivers ``job``; `InvalidJob` naming ``account`` if it is unknown here."""
    name = getattr(job, "account", None) or accounts.DEFAULT
    found = settings.accounts.get(name)
    if found is None:
        raise InvalidJob([Problem("account", "is not an account in ATTENTIVE_ACCOUNTS")])
    return found


class Destinations:
    """Every destination's client for one worker process. Thread-safe."""

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self.attentive_rest = AttentiveRest(settings, transport)
        self.attentive_graphql = AttentiveGraphQL(settings, transport)
        self.yotpo = Yotpo(settings, transport)

    def for_job(self, job: BaseModel) -> Destination:
        kind = getattr(job, "kind", None)
        if kind == "yotpo_custom_event":
            return self.yotpo
        if kind == "custom_event" and self.settings.attentive_custom_events_api == "graphql":
            return self.attentive_graphql
        return self.attentive_rest

    def close(self) -> None:
        for destination in (self.attentive_rest, self.attentive_graphql, self.yotpo):
            destination.close()
