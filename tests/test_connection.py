"""Redis Sentinel and Redis Cluster URLs, against real sentinel and cluster processes."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from producers.producer import Producer
from producers.settings import Settings
from producers.store.connection import connect, sentinel_hosts
from worker.counters import stats
from worker.local.processes import RedisServer, free_port, redis_server_binary

from conftest import TOKEN, KindLimiter, make_settings, sandbox_requests, wait_for

EVENT = {"kind": "custom_event", "type": "Via Sentinel", "user": {"email": "a@example.com"}}


def test_sentinel_urls_name_every_sentinel_and_the_database():
    hosts, db, password = sentinel_hosts("sentinel://:pw@10.0.0.1:26379;sentinel://10.0.0.2:26380/3")
    assert hosts == [("10.0.0.1", 26379), ("10.0.0.2", 26380)] and db == 3 and password == "pw"


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[str]:
    primary = RedisServer().start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\nsentinel monitor relaymaster 127.0.0.1 {primary.port} 1\n")
    proc = subprocess.Popen([redis_server_binary(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    url = f"sentinel://127.0.0.1:{port}/0"
    try:
        wait_for(lambda: _master_known(url), 20, "sentinel to know the primary", 0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        primary.stop()


def _master_known(url: str) -> bool:
    try:
        return bool(connect(url, "relaymaster").ping())
    except Exception:
        return False


def test_a_worker_and_a_producer_work_through_sentinel(sentinel, sandbox, start_worker):
    url = sentinel
    settings = make_settings(url, sandbox.url, redis_sentinel_master="relaymaster")
    client = connect(url, "relaymaster")
    job_id = Producer(settings, None).enqueue(EVENT)
    assert client.exists(f"relay:job:{job_id}")
    start_worker(settings_=settings)
    wait_for(lambda: stats(client, settings)["delivered"] == 1, 30, "delivery through sentinel")
    assert [r["status"] for r in sandbox_requests(sandbox)] == [200]
    assert KindLimiter(client, settings).reserve("custom_event") == 0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    cli = shutil.which("redis-cli") or str(Path(redis_server_binary()).with_name("redis-cli"))
    nodes = []
    for _ in range(3):
        port = free_port()
        while port > 55_000:  # the cluster bus listens on port + 10000
            port = free_port()
        nodes.append(
            RedisServer(
                port=port,
                workdir=tmp_path,
                extra_args=["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"],
            ).start()
        )
    try:
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *[f"127.0.0.1:{n.port}" for n in nodes],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        url = f"redis+cluster://127.0.0.1:{nodes[0].port}/0"
        deadline = time.monotonic() + 30
        while (
            b"cluster_state:ok"
            not in subprocess.run(
                [cli, "-p", str(nodes[0].port), "cluster", "info"], capture_output=True, check=False
            ).stdout
        ):
            assert time.monotonic() < deadline, "cluster never became ready"
            time.sleep(0.2)
        yield url
    finally:
        for node in nodes:
            node.stop()


def test_the_rate_limiter_runs_on_redis_cluster(cluster: str):
    settings = Settings(attentive_api_token=TOKEN, attentive_rate_limit=100, attentive_rate_headroom=1.0)
    limiter = KindLimiter(connect(cluster), settings)
    waits, at = [], []
    for kind in ("identity", "identity", "custom_event", "custom_event"):
        at.append(time.monotonic())
        waits.append(limiter.reserve(kind))
    # The second slot of each is one interval after the first, less the time between the calls
    # (on a busy machine a cluster round trip can take a few milliseconds).
    assert waits[0] == 0 and 0.1 - (at[1] - at[0]) - 0.001 < waits[1] <= 0.1
    assert waits[2] == 0 and 0.01 - (at[3] - at[2]) - 0.001 < waits[3] <= 0.01
    limiter.back_off("purchase", 1.0)
    assert limiter.reserve("purchase") > 0.9


def test_a_worker_can_keep_its_limiter_on_a_cluster(cluster, redis_server, redis_client, sandbox, start_worker):
    settings = make_settings(redis_server.url, sandbox.url, attentive_rate_limit_redis_url=cluster)
    start_worker(settings_=settings)
    # Hold the bucket on the cluster: a worker that uses it cannot send for 3 s.
    KindLimiter(connect(cluster), settings).back_off("custom_event", 3.0)
    held_at = time.time()
    Producer(settings, redis_client).enqueue_many([EVENT] * 5)
    wait_for(lambda: stats(redis_client, settings)["delivered"] == 5, 30, "deliveries")
    first = min(r["at"] for r in sandbox_requests(sandbox))
    assert first - held_at > 2.5, "the worker's limiter must be the cluster's bucket"
    assert not redis_client.keys("relay:rate:*")
