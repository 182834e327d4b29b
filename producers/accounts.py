"""Accounts: one relay delivering for many brands, each with its own tokens and quotas.

A job may name an ``account``; a job without one belongs to the default account, whose
credentials are ``ATTENTIVE_API_TOKEN``, ``YOTPO_STORE_ID`` and ``YOTPO_ACCESS_TOKEN``. Other
accounts come from ``ATTENTIVE_ACCOUNTS`` (JSON) or the file named by
``ATTENTIVE_ACCOUNTS_FILE`` (for mounted secrets)::

    {"brand-a": {"token": "...", "rate_limit": 150,
                 "yotpo_store_id": "...", "yotpo_access_token": "..."}}

Only ``token`` matters to a worker; producers and the collector read only the names (so
they may be given the same JSON, or one without tokens). Each account has its own queue
(``ATTENTIVE_QUEUE`` + ``.`` + name), its own rate-limit buckets and its own counters, so one
brand's backlog or outage never holds up another's jobs.

Errors (`producers.errors.ConfigurationError`) name the setting, the account and the field, never a
value: the JSON holds secrets.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from producers.errors import ConfigurationError

DEFAULT = "default"
"""The name the default account goes by in counters, metrics and ``--account`` options."""

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
"""What an account name may be: it becomes part of a queue name and of Redis keys."""

MAX_ACCOUNTS = 1000
_FIELDS = {"token", "rate_limit", "yotpo_store_id", "yotpo_access_token"}


@dataclass(frozen=True)
class Account:
    """One brand's credentials. ``name`` is `DEFAULT` for the default account."""

    name: str
    token: SecretStr | None = None
    rate_limit: float | None = None
    """Requests per second per endpoint for this token, where it differs from ATTENTIVE_RATE_LIMIT."""
    yotpo_store_id: str | None = None
    yotpo_access_token: SecretStr | None = None

    def __repr__(self) -> str:
        return f"Account({self.name!r})"

    @property
    def token_setting(self) -> str:
        """Where this account's Attentive token is set, for messages that say it is missing."""
        return "ATTENTIVE_API_TOKEN" if self.name == DEFAULT else f"ATTENTIVE_ACCOUNTS {self.name}.token"


def _secret(value: Any, where: str) -> SecretStr | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"{where} must be a string")
    return SecretStr(value)


def _account(name: Any, spec: Any, setting: str) -> Account:
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigurationError(
            f"{setting}: account names must be 1-63 letters, digits, '-' or '_', starting with a letter or digit"
        )
    if name == DEFAULT:
        raise ConfigurationError(
            f"{setting}: '{DEFAULT}' is the account of ATTENTIVE_API_TOKEN and cannot be redefined"
        )
    where = f"{setting}: account {name}:"
    if not isinstance(spec, dict):
        raise ConfigurationError(f"{where} must be an object")
    unknown = sorted(k for k in spec if k not in _FIELDS)
    if unknown:
        raise ConfigurationError(f"{where} unknown field(s) {', '.join(unknown[:5])}")
    rate = spec.get("rate_limit")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 100_000):
        raise ConfigurationError(f"{where} rate_limit must be a number above 0")
    store = spec.get("yotpo_store_id")
    if store is not None and (not isinstance(store, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", store)):
        raise ConfigurationError(f"{where} yotpo_store_id must be 1-128 letters, digits, '-' or '_'")
    return Account(
        name=name,
        token=_secret(spec.get("token"), f"{where} token"),
        rate_limit=float(rate) if rate is not None else None,
        yotpo_store_id=store or None,
        yotpo_access_token=_secret(spec.get("yotpo_access_token"), f"{where} yotpo_access_token"),
    )


def parse(raw: str, setting: str = "ATTENTIVE_ACCOUNTS") -> dict[str, Account]:
    """Accounts from JSON text: ``ATTENTIVE_ACCOUNTS``, or the contents of the file named by
    ``ATTENTIVE_ACCOUNTS_FILE`` (``setting`` says which, for messages). Raises
    `ConfigurationError` naming the setting, the account and the field (never a value) when it
    does not fit the shape above."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise ConfigurationError(f"{setting}: is not valid JSON") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f'{setting}: must be a JSON object: {{"NAME": {{"token": "..."}}}}')
    if len(data) > MAX_ACCOUNTS:
        raise ConfigurationError(f"{setting}: at most {MAX_ACCOUNTS} accounts")
    return {name: _account(name, spec, setting) for name, spec in data.items()}


def read_file(path: Path) -> str:
    """The text of the file ``ATTENTIVE_ACCOUNTS_FILE`` names; `ConfigurationError` naming the
    setting (and no content) when it cannot be read or is larger than 1 MiB."""
    try:
        if path.stat().st_size > 1024 * 1024:
            raise ConfigurationError("ATTENTIVE_ACCOUNTS_FILE: is larger than 1 MiB")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"ATTENTIVE_ACCOUNTS_FILE: cannot be read ({type(exc).__name__})") from None


def queue_name(base: str, account: str | None) -> str:
    """The Celery queue of an account's jobs: the default account uses ``base`` itself."""
    return base if account in (None, "", DEFAULT) else f"{base}.{account}"
