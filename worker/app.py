"""The Celery app and its configuration, and the per-process runtime the task uses.

Configuration choices, and why (see docs/operations.md and docs/design.md):

- JSON only (no pickle), results ignored: a delivery's outcome lives in Redis counters and
  the dead-letter store, not in a result backend.
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged after the
  attempt is recorded, and requeued if the pool process dies.
- ``worker_disable_prefetch`` and a prefetch multiplier of 1: a worker holds only messages it
  is running, so the queue length is the real backlog and nothing waits in memory.
- The hard time limit derives from ``ATTENTIVE_LEASE_S``, the soft-shutdown window from
  ``ATTENTIVE_TIMEOUT_S``. A task only claims and hands its jobs to the lanes
  (`worker.delivery`); each request has its own deadline and its lease is renewed when it
  starts (`worker.lease`), in every pool. A shutdown lets the requests under way finish.
- ``ack_emulation`` off: kombu keeps no ``unacked`` hash and runs no restore sweep. The relay
  recovers every job itself from its job store (leases for claimed jobs, the reconciler for
  queued jobs whose message was lost; see `worker.jobstore`), sooner than kombu's visibility
  timeout would, and one recovery path is simpler to reason about than two. It also saves
  four Redis writes per message.
"""

from __future__ import annotations

import logging
import ssl
import threading

from celery import Celery, signals
from kombu import Queue

from producers.settings import Settings, load_settings
from producers.store.connection import from_settings, is_sentinel
from producers.store.message import TASK_NAME
from worker.compat import kombu_closed_channel_guard
from worker.delivery import SENDER_THREADS, Delivery
from worker.destinations import Destinations
from worker.destinations.attentive import AttentiveApi
from worker.jobstore import JobStore
from worker.ops import logs, sentry
from worker.pause_probe import PauseProbe
from worker.privacy.check import PrivacyCheck
from worker.privacy.forwarder import forwarder_for
from worker.ratelimit import for_settings
from worker.schedule import Promoter

log = logging.getLogger("attentive_relay.worker")

# kombu 5.7 can end the worker on a broker connection loss (AttributeError in
# Channel._connparams while closing the old connection); see worker.compat.kombu_closed_channel_guard.
kombu_closed_channel_guard.install()


def configure(app: Celery, settings: Settings) -> None:
    lease = settings.attentive_lease_s
    redis_url = settings.redis_url.get_secret_value()
    transport: dict[str, object] = {"ack_emulation": False}
    if is_sentinel(redis_url):
        transport["master_name"] = settings.redis_sentinel_master
    if redis_url.startswith("rediss://"):
        # Without this kombu connects to rediss:// with CERT_NONE (it only warns), so the broker,
        # and Flower with it, would send the Redis password to anyone in the middle. ssl_*
        # parameters in the URL (ssl_ca_certs=..., ssl_cert_reqs=...) still replace it.
        app.conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    app.conf.update(
        broker_url=redis_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_default_queue=settings.attentive_queue,
        # One queue per account, all consumed (kombu takes from them in turn), so one brand's
        # backlog never stands in front of another's jobs. A worker started with -Q consumes
        # only the queues it names.
        task_queues=[Queue(q, routing_key=q) for q in settings.queues],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_time_limit=int(lease - 5),
        # On SIGQUIT (what REMAP_SIGTERM=SIGQUIT makes of a platform's SIGTERM) Celery sleeps
        # this whole window if any task is running, and its parent reads no result meanwhile
        # (so a child may then wait 30 s in billiard's _ensure_messages_consumed). A task only
        # hands its jobs over, so the window need only cover a request under way.
        worker_soft_shutdown_timeout=settings.attentive_timeout_s + 1,
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )


def job_store(settings: Settings) -> JobStore:
    """A job store on its own Redis connection pool, configured from ``settings``."""
    # Every sender thread may need a connection at once (redis-py's default pool stops at 100).
    client = from_settings(settings, health_check_interval=30, max_connections=SENDER_THREADS + 64)
    return JobStore(
        client,
        settings.attentive_queue,
        int(settings.attentive_lease_s * 1000),
        settings.dlq_retention_ms,
        int(settings.attentive_orphan_s * 1000),
    )


class Runtime:
    """What one worker process needs, built once on first use (after the pool forks)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = job_store(settings)
        self.destinations = Destinations(settings)
        self.limiter = for_settings(settings, self.store.client)
        self.delivery = Delivery(settings, self.destinations, self.store, self.limiter)


settings = load_settings()
app = Celery("attentive_relay", set_as_current=True)
configure(app, settings)

_runtime: Runtime | None = None
_runtime_lock = threading.Lock()
_promoter: Promoter | None = None
_privacy_check: PrivacyCheck | None = None
_pause_probe: PauseProbe | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                _runtime = Runtime(settings)
                _runtime.delivery.task_slots = _task_slots
    return _runtime


@signals.worker_process_init.connect
def _fresh_runtime_after_fork(**_: object) -> None:
    # Sockets and pools must not be shared across a fork.
    global _runtime
    _runtime = None


@signals.setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: object) -> None:
    # Connecting here tells Celery to leave logging to us: JSON off a terminal, text on one.
    logs.configure(loglevel or logging.INFO)


@signals.celeryd_init.connect
def _start_sentry(**_: object) -> None:
    if sentry.init(settings):
        log.info("Sentry is on (personal data scrubbed)")


_task_slots = 1


@signals.worker_init.connect
def _count_task_slots(sender: object = None, **_: object) -> None:
    # A threads-pool process runs `--concurrency` tasks at once on one Delivery; a prefork
    # child runs one (see worker.delivery.Delivery._admit).
    global _task_slots
    if "thread" in str(getattr(sender, "pool_cls", "")).lower():
        _task_slots = int(getattr(sender, "concurrency", 1) or 1)


@signals.worker_ready.connect
def _start_promoter(**_: object) -> None:
    global _promoter
    _promoter = Promoter(job_store(settings), interval_s=0.1)
    _promoter.start()
    global _privacy_check
    _privacy_check = PrivacyCheck(forwarder_for(settings, from_settings(settings, health_check_interval=30))).start()
    global _pause_probe
    # Lanes paused by a 401 are resumed once GET /v1/me accepts their token (worker.pause_probe).
    attentive = AttentiveApi(settings)
    _pause_probe = PauseProbe(from_settings(settings, health_check_interval=30), settings, attentive.whoami).start()
    for account in settings.accounts.values():
        if account.token is None:
            log.error(
                "%s is not set: its Attentive deliveries will be dead-lettered as 'unauthorized'",
                account.token_setting,
            )


@signals.worker_shutdown.connect
def _stop_promoter(**_: object) -> None:
    if _promoter is not None:
        _promoter.stop()
    if _privacy_check is not None:
        _privacy_check.stop()
    _stop_sending()


@signals.worker_process_shutdown.connect
def _stop_sending(**_: object) -> None:
    # Tasks return before their sends end (worker.delivery): let the requests under way finish
    # and give the attempts not yet started back to the schedule, rather than leave them to
    # their leases (which would count an attempt and wait a lease period).
    if _runtime is not None:
        given = _runtime.delivery.close(settings.attentive_timeout_s + 1)
        if given:
            log.info("shutdown: %d attempts not yet started given back to the schedule", given)
    # A prefork child leaves through os._exit, which runs no atexit hook: write what is queued.
    logs.stop()


__all__ = ["TASK_NAME", "app", "runtime", "settings"]
