"""The one settings object, read from the environment once and passed explicitly.

The environment variable names are part of the contract (other tools set them).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from producers import accounts as accounts_
from producers.errors import ConfigurationError
from producers.job.sensitive_kinds import compile_patterns


class Settings(BaseSettings):
    """All knobs. Build it once (``Settings()``) and hand it to what needs it."""

    # use_attribute_docstrings: each field's docstring is its description, from which
    # `producers.settings_reference` renders docs/configuration.md.
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True, use_attribute_docstrings=True)

    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    """Broker and all state: jobs, the retry schedule, dead letters, counters. ``redis://``,
    ``rediss://``, ``unix://`` or ``sentinel://host:26379[;sentinel://...]/db``. With
    ``rediss://`` the server's certificate is always checked (producers, workers and Flower);
    name a private CA with ``?ssl_ca_certs=/path/ca.pem``. A single Redis or a Sentinel-managed
    primary, not a cluster (the job store's scripts span keys). A secret: the URL may carry
    the Redis password, so a repr or a traceback shows ``**********``."""

    redis_sentinel_master: str = "mymaster"
    """With a ``sentinel://`` REDIS_URL: the name Sentinel knows the primary by."""

    attentive_api_token: SecretStr | None = None
    """The default account's Bearer token. Only workers need it; producers never read it.
    Unset: the default account's deliveries dead-letter as ``unauthorized``."""

    attentive_base_url: str = "https://api.attentivemobile.com"
    """Attentive's API root. Point it at `attentive-relay sandbox` to run without Attentive."""

    attentive_custom_events_api: Literal["rest", "graphql"] = "rest"
    """How ``custom_event`` jobs reach Attentive: its REST endpoint (``/v1/events/custom``) or
    its GraphQL API's ``createCustomEvent`` mutation (``/v1/graphql``, in beta). The job format
    is the same either way."""

    attentive_accounts: SecretStr = SecretStr("")
    """More accounts (brands) besides the default one, as JSON
    ``{"NAME": {"token", "rate_limit", "yotpo_store_id", "yotpo_access_token"}}`` (see
    `producers.accounts`). Empty: the default account only. A secret: it holds tokens."""

    attentive_accounts_file: Path | None = None
    """A file holding the ``ATTENTIVE_ACCOUNTS`` JSON instead (a mounted secret)."""

    yotpo_store_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,128}$")
    """The default account's Yotpo store id (app key), for ``yotpo_custom_event`` jobs. Unset:
    the default account's Yotpo jobs dead-letter as ``unauthorized``."""

    yotpo_access_token: SecretStr | None = None
    """The default account's Yotpo access token, sent as the ``X-Yotpo-Token`` header (never in
    a URL). A secret."""

    yotpo_base_url: str = "https://api.yotpo.com"
    """Yotpo's API host. The custom-event path under it is `worker.destinations.yotpo.PATH`."""

    yotpo_rate_limit: float = Field(5.0, gt=0)
    """Yotpo's limit per store (requests/second)."""

    attentive_freshness_hours: float = Field(12.0, gt=0)
    """Events older than this are never sent: Attentive accepts them and discards them."""

    attentive_max_attempts: int = Field(12, ge=1, le=100)
    """Delivery attempts (first one included) before a transient failure is dead-lettered."""

    attentive_backoff_base_s: float = Field(5.0, gt=0)
    """The first backoff's ceiling, in seconds (see ``ATTENTIVE_BACKOFF_MAX_S``)."""

    attentive_backoff_max_s: float = Field(1800.0, gt=0)
    """The largest backoff ceiling, in seconds. The backoff before attempt n+1 is uniform in
    [0, min(max, base * 2**(n-1))] (full jitter). A 429 with ``Retry-After`` waits that long
    instead, capped at this. With the defaults a job keeps trying through an outage of about
    an hour. A retry that would land after its event goes stale is dead-lettered as ``stale``
    at once."""

    attentive_timeout_s: float = Field(10.0, gt=0, le=120)
    """Whole-request HTTP timeout for one call to a destination: the deadline of the whole
    exchange, so an answer still arriving then is cut off, in any pool."""

    attentive_default_region: str = Field("US", min_length=2, max_length=2)
    """Region used to read phone numbers written without a +country code."""

    attentive_lease_s: float = Field(60.0, ge=5, le=3600)
    """How long a job claimed by a worker that stopped renewing its lease (dead, frozen) waits
    before another worker takes it over. A live worker renews the lease every third of it and
    right before each send, so a live delivery is never taken over and a dead one comes back
    within about this long. Celery's hard time limit for a task is this minus 5 s. Must be at
    least ``ATTENTIVE_TIMEOUT_S`` + 10.
    """

    attentive_circuit_failure_share: float = Field(0.5, gt=0, le=1)
    """A circuit opens for an account at a destination when more than this share of its
    requests in the window failed with a 5xx or no answer (`worker.circuit`)."""

    attentive_circuit_min_requests: int = Field(20, ge=1)
    """...and the window holds at least this many requests."""

    attentive_circuit_window_s: float = Field(60.0, gt=0, le=3600)
    """The window those requests are counted in, per worker process."""

    attentive_circuit_probe_s: float = Field(30.0, gt=0, le=3600)
    """While a circuit is open its jobs are held, their attempts kept; one job is let through
    this often as a probe, and its success closes the circuit and makes the held jobs due."""

    attentive_orphan_s: float = Field(60.0, ge=1, le=86_400)
    """How long a job may wait in state ``queued`` before the promoter checks that its broker
    message still exists, and queues it again if not (a worker killed as Redis handed it the
    message). ``stats`` counts jobs waiting longer than this as ``queued_overdue``. Also how
    often an identity job with waiters is checked for having vanished.
    """

    attentive_max_waiters: int = Field(100_000, ge=1, le=10_000_000)
    """Most jobs that may wait for one identity job (`producers.store.ordering`). A job that would
    wait beyond that is queued at once, unordered, and counted as ``waiters_over_cap``: so
    many events for one person's id while its identity call is pending means an id shared by
    many people (a placeholder such as ``0``), which an identity call cannot link anyway, and
    holding them would grow Redis and the release without bound."""

    attentive_queue: str = Field("attentive", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    """The default account's Celery queue; account NAME's is ``ATTENTIVE_QUEUE.NAME``."""

    attentive_future_skew_s: float = Field(300.0, ge=0)
    """How far in the future an ``occurredAt`` may be (clock skew between hosts)."""

    attentive_dlq_retention_days: float = Field(
        30.0,
        gt=0,
        le=3650,
        validation_alias=AliasChoices("attentive_dlq_retention_days", "attentive_dead_letter_retention_days"),
    )
    """Dead-letter entries expire after this long (they hold personal data).

    ``ATTENTIVE_DEAD_LETTER_RETENTION_DAYS``, this setting's earlier name, is still read.
    """

    attentive_job_retention_hours: float | None = Field(None, gt=0, le=24 * 365)
    """A job record (and with it the personal data it holds) expires this long after it was
    queued, whatever state it is in; an expired job is counted as ``expired``. Must exceed the
    freshness window, so an event is never lost while it could still be sent. Unset: the
    freshness window plus 12 hours (24 hours by default), which also outlasts the whole retry
    schedule (12 attempts, at most about 1.7 hours of backoff).
    """

    attentive_erasure_key: SecretStr | None = None
    """Key of the keyed hash that indexes jobs by the phone numbers and emails they mention,
    for `attentive-relay erase`. Unset: a random key is created once and kept in Redis."""

    attentive_privacy_poll_s: float = Field(3600.0, ge=0.1, le=7 * 86_400)
    """How often a deletion request filed with Attentive's Privacy Request API is checked
    until Attentive reports it processed (`worker.privacy`; Attentive deletes within 30 days)."""

    attentive_rate_limit: float = Field(150.0, gt=0)
    """Attentive's limit per endpoint per token (requests/second), for endpoints not listed below."""

    attentive_rate_limits: dict[str, float] = Field(default_factory=dict)
    """Per-kind overrides as JSON, e.g. ``{"identity": 10, "custom_event": 300}``; the lanes
    ``privacy_delete`` and ``privacy_status`` pace deletion requests. Identity resolution
    defaults to Attentive's published 10/s.
    """

    attentive_rate_limit_redis_url: SecretStr | None = None
    """A separate Redis for the rate limiter (may be a ``redis+cluster://`` URL), for example one
    shared by several deployments that use the same token. Defaults to REDIS_URL."""

    attentive_rate_headroom: float = Field(0.97, gt=0, le=1)
    """Fraction of the limit to aim at, so clock and network jitter never tip a second over."""

    attentive_rate_max_wait_s: float = Field(0.1, ge=0.01, le=10)
    """A request thread that slept longer than this for its send slot checks whether another
    worker saw a 429 meanwhile, in a view of the holds read at most half this long ago (one
    round trip per bucket and period in a process; shorter waits trust this process's own
    knowledge). A deletion request reserves a slot at most this far ahead, or is put back
    until its slot.
    """

    attentive_sensitive_guard: bool = True
    """Refuse jobs carrying strings that look like payment cards or SSNs (see producers.job.sensitive)."""

    attentive_sensitive_patterns: dict[str, str] = Field(default_factory=dict)
    """More sensitive-data patterns, as JSON ``{"name": "regex"}``. Compiled here, so a bad
    pattern stops start-up (naming the pattern) instead of failing every job."""

    @field_validator("attentive_sensitive_patterns")
    @classmethod
    def _patterns_compile(cls, value: dict[str, str]) -> dict[str, str]:
        compile_patterns(value)  # cached: the guard reuses these compiled patterns
        return value

    attentive_segment_rename_keys: bool = False
    """Segment property names with characters Attentive forbids: refused (default), or renamed
    with each such character replaced by ``_``."""

    attentive_segment_to_yotpo: bool = False
    """Also make a Yotpo custom event (``yotpo_custom_event``) of every Segment track message
    (see `producers.segment.yotpo`), for the account's Yotpo store. Off by default."""

    yotpo_source: str = Field("attentive_relay", max_length=255, pattern=r"^[a-z0-9]+(_[a-z0-9]+)*$")
    """The ``source`` of the Yotpo events the Segment fan-out makes (snake_case)."""

    collector_write_keys: SecretStr = SecretStr("")
    """Comma-separated Segment write keys the collector accepts; any other key gets 401. Each is
    ``KEY`` (the default account's) or ``KEY:ACCOUNT`` (its messages' jobs are for that account
    of ``ATTENTIVE_ACCOUNTS``); a key cannot contain ``:`` (HTTP Basic auth, which Segment's
    libraries send the key in, ends the user at the first ``:``). Empty: ``collect`` refuses to
    start. A secret: reprs and tracebacks show ``**********``."""

    collector_allowed_origins: str = ""
    """Comma-separated browser origins (``https://shop.example``) the collector accepts
    requests from, with CORS headers; a request with any other ``Origin`` gets 403. Empty:
    browsers are refused."""

    @cached_property
    def accounts(self) -> dict[str, accounts_.Account]:
        """Every account by name, the default one (`producers.accounts.DEFAULT`) first."""
        default = accounts_.Account(
            accounts_.DEFAULT,
            token=self.attentive_api_token,
            yotpo_store_id=self.yotpo_store_id,
            yotpo_access_token=self.yotpo_access_token,
        )
        return {accounts_.DEFAULT: default, **self._named_accounts}

    @cached_property
    def _named_accounts(self) -> dict[str, accounts_.Account]:
        raw = self.attentive_accounts.get_secret_value()
        if self.attentive_accounts_file is not None:
            return accounts_.parse(accounts_.read_file(self.attentive_accounts_file), "ATTENTIVE_ACCOUNTS_FILE")
        return accounts_.parse(raw)

    def queue_for(self, account: str | None) -> str:
        """The Celery queue that carries ``account``'s jobs."""
        return accounts_.queue_name(self.attentive_queue, account)

    @property
    def queues(self) -> tuple[str, ...]:
        """Every account's queue, the default account's first: what a worker consumes."""
        return tuple(self.queue_for(name) for name in self.accounts)

    @property
    def write_keys(self) -> tuple[tuple[SecretStr, str], ...]:
        """The collector's write keys, each a `SecretStr` with the name of its account
        (`producers.accounts.DEFAULT` for a key without ``:ACCOUNT``), without blanks or
        duplicates. Raises `ConfigurationError` (naming the entry's position or the account, never
        a key) for an entry that does not fit ``KEY[:ACCOUNT]`` or a key given two accounts."""
        found: dict[str, str] = {}
        for position, entry in enumerate(self.collector_write_keys.get_secret_value().split(","), 1):
            if not entry.strip():
                continue
            key, _, account = (part.strip() for part in entry.partition(":"))
            account = account if ":" in entry else accounts_.DEFAULT
            where = f"COLLECTOR_WRITE_KEYS entry {position}"
            if not key or ":" in account:
                raise ConfigurationError(f"{where}: must be KEY or KEY:ACCOUNT (a key cannot contain ':')")
            if not accounts_.NAME.match(account):
                raise ConfigurationError(f"{where}: the account must be an account name")
            if found.setdefault(key, account) != account:
                raise ConfigurationError(f"{where}: the same key is given accounts {found[key]} and {account}")
        return tuple((SecretStr(key), account) for key, account in found.items())

    @property
    def allowed_origins(self) -> frozenset[str]:
        """The browser origins the collector accepts, without a trailing slash."""
        return frozenset(o.strip().rstrip("/") for o in self.collector_allowed_origins.split(",") if o.strip())

    @model_validator(mode="after")
    def _lease_covers_a_request(self) -> Settings:
        # A ConfigurationError is a ValueError: pydantic makes it part of the ValidationError.
        if self.attentive_lease_s < self.attentive_timeout_s + 10:
            raise ConfigurationError("ATTENTIVE_LEASE_S must be at least ATTENTIVE_TIMEOUT_S + 10")
        if self.attentive_backoff_max_s < self.attentive_backoff_base_s:
            raise ConfigurationError("ATTENTIVE_BACKOFF_MAX_S must be at least ATTENTIVE_BACKOFF_BASE_S")
        if self.attentive_accounts_file is not None and self.attentive_accounts.get_secret_value().strip():
            raise ConfigurationError("set ATTENTIVE_ACCOUNTS or ATTENTIVE_ACCOUNTS_FILE, not both")
        self._named_accounts  # noqa: B018 - read once here, so a bad value stops start-up
        retention = self.attentive_job_retention_hours
        if retention is not None and retention <= self.attentive_freshness_hours:
            raise ConfigurationError("ATTENTIVE_JOB_RETENTION_HOURS must be longer than ATTENTIVE_FRESHNESS_HOURS")
        return self

    @property
    def freshness_s(self) -> float:
        return self.attentive_freshness_hours * 3600.0

    @property
    def job_retention_ms(self) -> int:
        hours = self.attentive_job_retention_hours
        return int((self.attentive_freshness_hours + 12 if hours is None else hours) * 3_600_000)

    @property
    def dlq_retention_ms(self) -> int:
        return int(self.attentive_dlq_retention_days * 86_400_000)

    @property
    def person_index_ms(self) -> int:
        """How long a person's set of jobs (`producers.store.erasure`) lives: past every job
        and dead letter in it."""
        return max(self.job_retention_ms, self.dlq_retention_ms)


def load_settings() -> Settings:
    """``Settings()`` from the environment, or a `ConfigurationError` that names each bad
    variable and its rule but never its value (a URL may hold a password, a token is secret)."""
    try:
        return Settings()
    except ValidationError as err:
        problems = []
        for e in err.errors(include_url=False, include_input=False, include_context=False):
            name = "_".join(str(part) for part in e["loc"]).upper()
            rule = e["msg"].removeprefix("Value error, ")
            # A rule across fields (no name here) or a ConfigurationError names its variable itself.
            problems.append(rule if not name or rule.startswith(f"{name}:") else f"{name}: {rule}")
        raise ConfigurationError("invalid settings: " + "; ".join(problems)) from None
    except SettingsError as err:
        # Raised for unparseable JSON in a variable; its message names the field only.
        raise ConfigurationError(f"invalid settings: {err}") from None
