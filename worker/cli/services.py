"""The long-running processes: ``sandbox``, ``metrics``, ``scheduler``, ``flower``, ``demo``."""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated

import typer

from producers.errors import ConfigurationError
from worker.cli.context import _client, _settings, cli, err, out


@cli.command()
def sandbox(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8787,
    rate: Annotated[int, typer.Option(help="Requests per second per endpoint per token.")] = 150,
    fail_rate: Annotated[float, typer.Option(help="Fraction of requests answered 503.")] = 0.0,
    latency_ms: Annotated[int, typer.Option(help="Added to every request.")] = 0,
    token: Annotated[
        str | None, typer.Option(help="Accept only this token (default: any).", envvar="SANDBOX_TOKEN")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Run the local stand-in for Attentive's API."""
    from worker.sandbox.server import Sandbox

    server = Sandbox(host, port, token=token, rate=rate, fail_rate=fail_rate, latency_ms=latency_ms)
    out.print(f"sandbox listening on {server.url} (rate {rate}/s, fail rate {fail_rate}, latency {latency_ms} ms)")
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


@cli.command()
def metrics(
    port: Annotated[int, typer.Option(help="Port for /metrics.")] = 9808,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Serve Prometheus metrics (backlog, retries, dead letters by reason, limiter waits)."""
    import time

    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    from worker.ops.metrics import RelayCollector

    settings = _settings()
    registry = CollectorRegistry()
    registry.register(RelayCollector(_client(settings), settings))
    start_http_server(port, addr=host, registry=registry)
    out.print(f"metrics on http://{host}:{port}/metrics")
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)


@cli.command()
def scheduler(interval: Annotated[float, typer.Option(help="Seconds between passes.")] = 1.0) -> None:
    """Run only the promoter (due retries and lost deliveries) and the check of deletion requests
    forwarded to Attentive; workers also run one of each."""
    from worker.app import job_store
    from worker.privacy.check import PrivacyCheck
    from worker.privacy.forwarder import forwarder_for
    from worker.schedule import Promoter

    settings = _settings()
    client = _client(settings)
    promoter = Promoter(job_store(settings), interval)
    check = PrivacyCheck(forwarder_for(settings, client), interval).start()
    out.print("promoter running; Ctrl-C stops it")
    try:
        promoter.run_forever()
    except KeyboardInterrupt:
        promoter.stop()
        check.stop()


@cli.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def flower(ctx: typer.Context) -> None:
    """Start Flower with its authentication checked; other arguments go to Flower (--port=5555).

    Refuses to start (exit 2) unless FLOWER_BASIC_AUTH is user:password for every entry, or
    OAuth is fully configured: Flower would otherwise serve its dashboard and API to anyone.
    """
    import os

    from worker.ops.dashboard import flower_command

    try:
        argv = flower_command(os.environ, ctx.args)
    except ConfigurationError as exc:  # OpenDashboard: the message names the setting and the rule
        err.print(f"refusing to start Flower: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    sys.stdout.flush()
    os.execv(argv[0], argv)  # noqa: S606  (a fixed argv: this interpreter running celery)


@cli.command()
def demo(
    jobs: Annotated[int, typer.Option(help="How many sample jobs.")] = 60,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 120.0,
) -> None:
    """Bring up Redis (embedded if none is reachable), the sandbox and a worker; deliver samples."""
    from worker.local.demo import run_demo

    raise typer.Exit(run_demo(jobs, timeout, out))
