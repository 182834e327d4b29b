"""Starting Flower so that it never serves anyone without credentials.

Flower 2.2 treats an empty ``--basic-auth`` as "no authentication", and a list with an empty
entry (``admin:pw,``) as "the empty credential is valid": the header ``Authorization: Basic =``
then opens the dashboard, the API and worker shutdown. `attentive-relay flower` checks the
settings first and refuses to start (exit 2, naming the rule, never the value) unless:

- every comma-separated entry of ``FLOWER_BASIC_AUTH`` is ``user:password`` with both parts
  non-empty, or
- OAuth is configured completely: ``FLOWER_AUTH_PROVIDER``, ``FLOWER_AUTH`` (the allowed
  emails), ``FLOWER_OAUTH2_KEY`` and ``FLOWER_OAUTH2_SECRET``;

and ``FLOWER_UNAUTHENTICATED_API`` is not switched on. Flower's ``/metrics`` and
``/healthcheck`` stay unauthenticated whatever the settings (a Flower property): keep its port
private.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from producers.errors import ConfigurationError

OAUTH_VARIABLES = ("FLOWER_AUTH_PROVIDER", "FLOWER_AUTH", "FLOWER_OAUTH2_KEY", "FLOWER_OAUTH2_SECRET")


class OpenDashboard(ConfigurationError):
    """Flower's settings would let someone in without credentials. The message names the
    setting and the rule, never a value. A `ConfigurationError` like every bad setting."""


def basic_auth_entries(value: str) -> list[str]:
    """The credentials in ``FLOWER_BASIC_AUTH``, or `OpenDashboard` if any entry is incomplete."""
    entries = value.split(",")
    for position, entry in enumerate(entries, 1):
        user, sep, password = entry.partition(":")
        if not sep or not user.strip() or not password:
            raise OpenDashboard(
                f"FLOWER_BASIC_AUTH: entry {position} of {len(entries)} must be user:password with both parts non-empty"
            )
    return entries


def flower_arguments(environ: Mapping[str, str]) -> list[str]:
    """The authentication arguments for ``celery flower``, or `OpenDashboard`."""
    if environ.get("FLOWER_UNAUTHENTICATED_API", "").strip().lower() in ("1", "true", "yes", "on"):
        raise OpenDashboard("FLOWER_UNAUTHENTICATED_API must not be on: it opens the API to anyone")
    basic = environ.get("FLOWER_BASIC_AUTH", "")
    if basic.strip():
        return ["--basic-auth=" + ",".join(basic_auth_entries(basic))]
    missing = [name for name in OAUTH_VARIABLES if not environ.get(name, "").strip()]
    if not missing:
        return []  # Flower reads its OAuth settings from these variables itself
    if len(missing) < len(OAUTH_VARIABLES):
        raise OpenDashboard("OAuth for Flower needs " + ", ".join(missing) + " as well")
    raise OpenDashboard("set FLOWER_BASIC_AUTH=user:password (or OAuth: " + ", ".join(OAUTH_VARIABLES) + ")")


def flower_command(environ: Mapping[str, str], extra: Sequence[str]) -> list[str]:
    """The full ``celery flower`` command line with the checked authentication arguments."""
    return [sys.executable, "-m", "celery", "-A", "worker", "flower", *flower_arguments(environ), *extra]
