"""``attentive-relay collect``: check the settings, then exec the collector's supervisor."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from producers.errors import ConfigurationError
from producers.producer import Producer
from worker.cli.context import _client, _settings, cli, err, out


@cli.command()
def collect(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8788,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(min=1, max=64, help="Server processes (one per core is plenty).")] = 2,
) -> None:
    """Run the Segment-compatible collector (write keys from COLLECTOR_WRITE_KEYS)."""
    from worker.collector.app import CollectorApp
    from worker.collector.server import exec_serve

    settings = _settings()
    try:
        # checked here, once, so a bad configuration stops the command rather than each worker
        CollectorApp(Producer(settings, _client(settings)))
    except ConfigurationError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    out.print(
        f"collector listening on http://{host}:{port} ({len(settings.write_keys)} write keys,"
        f" {len(settings.allowed_origins)} browser origins, {workers} processes)",
        soft_wrap=True,
    )
    sys.stdout.flush()
    exec_serve(host, port, workers)
