"""``rediss://``: the broker checks the Redis server's certificate, as the producers do.

A real redis-server listening with TLS only, its certificate signed by a throwaway CA
(trustme). kombu on its own connects to ``rediss://`` without checking the certificate
(CERT_NONE, with a warning); the relay's Celery app must refuse an unknown one, and connect
when the CA is given in the URL (``?ssl_ca_certs=...``).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import trustme
from celery import Celery

from producers.settings import Settings
from worker.app import configure
from worker.local.processes import RedisServer, free_port


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    workdir = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_path, cert_path, key_path = workdir / "ca.pem", workdir / "cert.pem", workdir / "key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    port = free_port()
    server = RedisServer(
        port=free_port(),
        extra_args=[
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(cert_path),
            "--tls-key-file",
            str(key_path),
            "--tls-ca-cert-file",
            str(ca_path),
            "--tls-auth-clients",
            "no",
        ],
    ).start()
    try:
        yield port, ca_path
    finally:
        server.stop()


def broker(url: str) -> Celery:
    app = Celery("tls-test", set_as_current=False)
    configure(app, Settings(redis_url=url))
    return app


def test_the_broker_refuses_a_certificate_it_cannot_verify(tls_redis):
    port, _ = tls_redis
    with broker(f"rediss://127.0.0.1:{port}/0").connection_for_write() as conn, pytest.raises(Exception) as caught:
        conn.ensure_connection(max_retries=0)
        conn.default_channel.client.ping()
    assert isinstance(caught.value.__context__ or caught.value, ssl.SSLError | redis.ConnectionError | OSError)
    assert "certificate verify failed" in repr(caught.value) + repr(caught.value.__context__)


def test_the_broker_connects_when_the_ca_is_given(tls_redis):
    port, ca_path = tls_redis
    with broker(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca_path}").connection_for_write() as conn:
        conn.ensure_connection(max_retries=0)
        assert conn.default_channel.client.ping()


def test_the_producers_client_checks_the_certificate_too(tls_redis):
    port, ca_path = tls_redis
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(f"rediss://127.0.0.1:{port}/0").ping()
    assert redis.Redis.from_url(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca_path}").ping()
