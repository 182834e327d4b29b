"""Redis clients from URLs: the one place that knows URL schemes.

- ``redis://``, ``rediss://``, ``unix://``: a single Redis.
- ``sentinel://host:26379[;sentinel://host2:26379][/db]``: the primary that Redis Sentinel
  names ``REDIS_SENTINEL_MASTER`` (kombu's URL form, so the Celery broker takes the same URL).
- ``redis+cluster://`` / ``rediss+cluster://``: Redis Cluster. Only the rate limiter may use it
  (``ATTENTIVE_RATE_LIMIT_REDIS_URL``): its scripts touch one key each, while the job store's
  scripts, like Celery's Redis broker, need a single primary.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from producers.settings import Settings


ASYNC_POOL: dict[str, Any] = {"max_connections": 100, "timeout": 20.0}
"""A ``redis.asyncio`` client's pool for one Redis: at most 100 connections per event loop, and
a command waits up to 20 s for one of them before raising ``redis.ConnectionError``."""


def is_sentinel(url: str) -> bool:
    return url.startswith("sentinel://")


def is_cluster(url: str) -> bool:
    return url.split("://", 1)[0] in ("redis+cluster", "rediss+cluster")


def sentinel_hosts(url: str) -> tuple[list[tuple[str, int]], int, str | None]:
    """(host, port) pairs, database number and password of a ``sentinel://`` URL."""
    hosts, db, password = [], 0, None
    for part in url.split(";"):
        parsed = urlsplit(part.strip())
        hosts.append((parsed.hostname or "localhost", parsed.port or 26379))
        if parsed.path.strip("/").isdigit():
            db = int(parsed.path.strip("/"))
        password = parsed.password or password
    return hosts, db, password


def connect(url: str, sentinel_master: str = "mymaster", *, asyncio: bool = False, **options: Any) -> Any:
    """A redis-py client for ``url`` (see the module docstring for the schemes); with ``asyncio``
    its ``redis.asyncio`` counterpart, whose connections belong to the event loop that opens them."""
    package = "redis.asyncio" if asyncio else "redis"
    if is_sentinel(url):
        sentinel = importlib.import_module(f"{package}.sentinel")
        hosts, db, password = sentinel_hosts(url)
        timeout = options.get("socket_timeout", 5)
        return sentinel.Sentinel(hosts, socket_timeout=timeout, password=password).master_for(
            sentinel_master, db=db, password=password, **options
        )
    if is_cluster(url):
        cluster = importlib.import_module(f"{package}.cluster")
        return cluster.RedisCluster.from_url(url.replace("+cluster", "", 1), **options)
    if asyncio:
        from redis.asyncio import BlockingConnectionPool
        from redis.asyncio import Redis as AsyncRedis

        # redis.asyncio's default pool raises once all its connections are in use: a burst of
        # concurrent requests should wait for a free one (up to the timeout) rather than fail.
        return AsyncRedis.from_pool(BlockingConnectionPool.from_url(url, **{**ASYNC_POOL, **options}))
    return importlib.import_module(package).Redis.from_url(url, **options)


def from_settings(settings: Settings, *, asyncio: bool = False, **options: Any) -> Any:
    """The client for ``REDIS_URL`` (broker and state); with ``asyncio``, a ``redis.asyncio`` one."""
    return connect(settings.redis_url.get_secret_value(), settings.redis_sentinel_master, asyncio=asyncio, **options)
