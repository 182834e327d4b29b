"""What every command shares: the Typer apps (``cli``, ``dlq``), the consoles, the option
types, and reading the settings (exit 2 when one is bad) and connecting to Redis (exit 3)."""

from __future__ import annotations

from typing import Annotated

import redis
import typer
from rich.console import Console

from producers.accounts import DEFAULT
from producers.errors import ConfigurationError
from producers.settings import Settings, load_settings
from producers.store.connection import from_settings

cli = typer.Typer(
    help="Deliver customer events and attributes to Attentive through Redis and Celery.",
    no_args_is_help=True,
    add_completion=False,
    # A crash's traceback must not print local variables: they hold settings, URLs, jobs.
    pretty_exceptions_show_locals=False,
)
dlq = typer.Typer(help="Inspect, replay and purge dead-lettered jobs.", no_args_is_help=True)
cli.add_typer(dlq, name="dlq")
out = Console()
err = Console(stderr=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Only entries with this reason.")]
AccountOpt = Annotated[
    str | None, typer.Option("--account", help=f"Only the jobs of this account ('{DEFAULT}': the default one).")
]


def _print_version(value: bool) -> None:
    if value:
        from producers import __version__

        out.print(f"attentive-relay {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@cli.callback()
def _global_options(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the installed version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    # The version is the package metadata's (pyproject.toml), the one string there is.
    pass


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as exc:
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(2) from None


def _client(settings: Settings) -> redis.Redis:
    client = from_settings(settings, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        err.print(f"[red]cannot reach Redis at REDIS_URL ({type(exc).__name__})[/red]")
        raise typer.Exit(3) from None
    return client


def _configured(settings: Settings, account: str) -> None:
    """Exit 1 with a message naming ``account`` unless the settings configure it."""
    if account not in settings.accounts:
        err.print(f"account {account} is not in ATTENTIVE_ACCOUNTS", markup=False, highlight=False)
        raise typer.Exit(1)
