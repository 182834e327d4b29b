"""Asking Attentive: ``check`` (readiness: Redis and every account's token) and ``attributes``."""

from __future__ import annotations

import json
from typing import Annotated, Any

import redis
import typer
from rich.table import Table

from producers.accounts import DEFAULT
from producers.settings import Settings
from producers.store.connection import from_settings
from worker.cli.context import JsonFlag, _settings, cli, err, out


def _attentive(settings: Settings) -> Any:
    from worker.destinations.attentive import AttentiveApi

    return AttentiveApi(settings)


@cli.command()
def check(as_json: JsonFlag = False) -> None:
    """Readiness: exit 0 when Redis answers and Attentive accepts every account's token (GET /v1/me).

    Keys: ``redis``, ``attentive`` (the default account) and ``attentive:NAME`` for each other
    account of ATTENTIVE_ACCOUNTS.
    """
    import httpx

    settings = _settings()
    result: dict[str, str] = {}
    try:
        from_settings(settings, socket_connect_timeout=5, socket_timeout=5).ping()
        result["redis"] = "ok"
    except redis.RedisError as exc:
        result["redis"] = f"unreachable ({type(exc).__name__})"
    api = _attentive(settings)
    for name, account in settings.accounts.items():
        key = "attentive" if name == DEFAULT else f"attentive:{name}"
        if account.token is None or not account.token.get_secret_value():
            result[key] = f"{account.token_setting} is not set"
            continue
        try:
            status = api.whoami(account)
            result[key] = {200: "ok", 401: "token refused (401)", 403: "token refused (403)"}.get(
                status, f"unexpected HTTP {status}"
            )
        except httpx.HTTPError as exc:
            result[key] = f"unreachable ({type(exc).__name__})"
    healthy = all(v == "ok" for v in result.values())
    if as_json:
        print(json.dumps({"ok": healthy, **result}))
    else:
        for name, state in result.items():
            (out if state == "ok" else err).print(f"{name}: {state}", markup=False, highlight=False)
    raise typer.Exit(0 if healthy else 1)


@cli.command()
def attributes(
    phone: Annotated[str | None, typer.Option(help="The customer's phone number.")] = None,
    email: Annotated[str | None, typer.Option(help="The customer's email address.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the custom attributes Attentive holds for one customer (exactly one of --phone, --email)."""
    import httpx

    from producers.job.rules import check_email, normalize_phone

    if (phone is None) == (email is None):
        raise typer.BadParameter("give exactly one of --phone or --email")
    settings = _settings()
    try:
        query = (
            {"phone": normalize_phone(phone, settings.attentive_default_region)}
            if phone
            else {"email": check_email(email or "")}
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        token = settings.attentive_api_token.get_secret_value() if settings.attentive_api_token else ""
        auth = {"Authorization": f"Bearer {token}"}
        response = _attentive(settings).http.get("/v1/attributes/custom", params=query, headers=auth)
    except httpx.HTTPError as exc:
        err.print(f"cannot reach Attentive ({type(exc).__name__})")
        raise typer.Exit(1) from None
    if response.status_code != 200:
        err.print(f"Attentive answered HTTP {response.status_code}")
        raise typer.Exit(1)
    data = response.json()
    if as_json:
        print(json.dumps(data))
        return
    table = Table("name", "value")
    for row in data:
        table.add_row(str(row.get("name")), str(row.get("value")))
    out.print(table)
