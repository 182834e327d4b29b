"""``attentive-relay erase``: delete one person's jobs and dead letters, and ask Attentive to."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from producers.errors import InvalidJob
from producers.settings import Settings
from worker.cli.context import JsonFlag, _client, _configured, _settings, cli, err, out

if TYPE_CHECKING:
    from worker.privacy.store import RequestStore


@cli.command()
def erase(
    phone: Annotated[str | None, typer.Option(help="The person's phone number; - reads it from stdin.")] = None,
    email: Annotated[str | None, typer.Option(help="The person's email address; - reads it from stdin.")] = None,
    client_user_id: Annotated[
        str | None,
        typer.Option(
            "--client-user-id",
            help="The person's clientUserId, in every account or those named with --account; - reads it from stdin.",
        ),
    ] = None,
    forward: Annotated[
        bool,
        typer.Option(
            "--forward/--no-forward",
            help="File a deletion request with Attentive for every account the person's jobs were queued under "
            "(the default: a person asks once). --no-forward erases the relay's copy only.",
        ),
    ] = True,
    accounts: Annotated[
        list[str] | None,
        typer.Option(
            "--account",
            help="Forward to this account too (repeatable): needed when the relay no longer holds the person's "
            "jobs (delivered or expired), so it cannot know their accounts.",
        ),
    ] = None,
    status: Annotated[
        bool,
        typer.Option(
            "--status", help="List the deletion requests forwarded (only this person's with --phone/--email)."
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Delete every job and dead letter of one person (exactly one of --phone, --email,
    --client-user-id), with the jobs their customer ids lead to, then file a deletion request
    with Attentive for each of their accounts (by the phones and emails those jobs held, for
    --client-user-id: Attentive deletes by phone or email).

    Works while workers run. With ``-`` the value is read from stdin, so it stays out of the
    shell's history. Afterwards no Redis key holds it (docs/privacy.md, "Erasure", for AOF and RDB copies).
    Attentive is asked with each account's own token (accounts without an Attentive token are
    skipped, and said so); a request not filed at once is filed by the workers, which then
    check it until Attentive reports it processed. --json adds ``forwarded``: per account its
    ``status`` (filed, pending, failed, skipped), ``request_id`` and ``reason``. Exit 1 when a
    request failed. ``--status`` lists requests by a keyed hash of the person: account, request
    id, times, state; never a phone number or email.
    """
    from producers.store.erasure import customer_id
    from producers.store.erasure import erase as erase_person
    from worker.privacy.forwarder import forwarder_for, person_of
    from worker.privacy.store import RequestStore

    if "-" in (phone, email, client_user_id):
        value = sys.stdin.readline().strip()
        given = (phone, email, client_user_id)
        phone, email, client_user_id = (None if g is None else value for g in given)
    if status:
        if phone is not None and email is not None:
            raise typer.BadParameter("give at most one of --phone or --email")
        settings = _settings()
        client = _client(settings)
        who = None if phone is None and email is None else person_of(client, settings, _person(settings, phone, email))
        _print_requests(RequestStore(client), who, as_json)
        return
    if sum(given is not None for given in (phone, email, client_user_id)) != 1:
        raise typer.BadParameter("give exactly one of --phone, --email or --client-user-id")
    if accounts and not forward and client_user_id is None:
        raise typer.BadParameter("--account names accounts to forward to: not with --no-forward")
    settings = _settings()
    for name in accounts or []:
        _configured(settings, name)
    person = None if client_user_id is not None else _person(settings, phone, email)
    client = _client(settings)
    forwarder = forwarder_for(settings, client)
    recorded: list[dict[str, object]] = []
    targets: list[str] = []

    def record(found: tuple[str, ...], people: tuple[str, ...]) -> None:
        # Before anything is deleted: a command killed midway leaves requests for the workers.
        # Attentive deletes by phone or email: a customer id is forwarded as those its jobs held.
        targets.extend(dict.fromkeys([*found, *(accounts or [])]))
        for subject in [person] if person is not None else people:
            recorded.extend(forwarder.record(person_of(client, settings, subject), subject, targets))

    names = accounts or settings.accounts
    ids = [customer_id(name, "clientUserId", client_user_id) for name in names] if client_user_id else []
    erased = erase_person(client, settings, person, ids=ids, before_delete=record if forward else None)
    if erased.fenced_s:
        err.print(
            f"waited {erased.fenced_s:g} s for attempts in flight to be fenced: none is sent now",
            markup=False,
            highlight=False,
        )
    forwarded: list[dict[str, object]] = []
    if forward:
        forwarded = forwarder.attempt(recorded)
        if not targets:
            err.print(
                "not forwarded: the relay holds no job of this person, so it does not know their accounts; "
                "name them with --account NAME",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    if as_json:
        print(json.dumps({"jobs": erased.jobs, "dead_letters": erased.dead_letters, "forwarded": forwarded}))
    else:
        out.print(f"erased {erased.jobs} jobs and {erased.dead_letters} dead letters")
    for item in forwarded:
        line = f"account {item['account']}: {item['status']}" + (
            f" (request {item['request_id']})" if item["request_id"] else ""
        )
        if item["status"] == "pending":
            line += "; the workers file it (attentive-relay erase --status)"
        if item["reason"]:
            line += f": {item['reason']}"
        (err if item["status"] in ("failed", "skipped") or as_json else out).print(
            line, markup=False, highlight=False, soft_wrap=True
        )
    raise typer.Exit(1 if any(item["status"] == "failed" for item in forwarded) else 0)


def _person(settings: Settings, phone: str | None, email: str | None) -> str:
    """The canonical identifier, or exit 1 naming the rule it breaks (never the value)."""
    from producers.store.erasure import identifier

    try:
        return identifier(settings, phone=phone, email=email)
    except InvalidJob as exc:
        for problem in exc.problems:
            err.print(str(problem), markup=False, highlight=False)
        raise typer.Exit(1) from None


def _print_requests(store: RequestStore, person: str | None, as_json: bool, limit: int = 1000) -> None:
    """The deletion requests forwarded to Attentive, newest first (``erase --status``)."""
    rows = [r.row() for r in store.list(limit, person)]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("person", "account", "request_id", "state", "created", "filed", "processed", "reason")
    for r in rows:
        table.add_row(
            str(r["person"])[:16],
            str(r["account"]),
            str(r["request_id"] or ""),
            str(r["state"]),
            str(r["created"] or ""),
            str(r["filed"] or ""),
            str(r["processed"] or ""),
            str(r["reason"] or ""),
        )
    out.print(table)
