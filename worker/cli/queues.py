"""The queues of the accounts: ``stats``, ``resume`` (lift a pause), ``requeue`` (an account no worker
serves)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.table import Table

from producers.store import erasure
from worker.cli.context import JsonFlag, _client, _configured, _settings, cli, err, out


@cli.command()
def stats(as_json: JsonFlag = False) -> None:
    """Counters by outcome and the current queue depths."""
    from worker.counters import stats as read_stats

    settings = _settings()
    data = read_stats(_client(settings), settings)
    if as_json:
        print(json.dumps(data))
        return
    table = Table(title="attentive-relay", show_header=False)
    for key, value in data.items():
        if key == "dead_letter":
            for reason, count in value.items():
                table.add_row(f"dead_letter.{reason}", str(count))
        elif key != "accounts":
            table.add_row(key, str(value))
    out.print(table)
    accounts = Table(
        "account", "delivered", "dead_letter", "queued", "scheduled", "oldest_queued_s", "served", title="by account"
    )
    for name, counts in data["accounts"].items():
        dead = counts["dead_letter"]
        by_reason = ", ".join(f"{reason} {count}" for reason, count in dead.items() if count)
        total = sum(dead.values())
        accounts.add_row(
            name,
            str(counts["delivered"]),
            f"{total} ({by_reason})" if total else "0",
            str(counts["queued"]),
            str(counts["scheduled"]),
            str(counts["oldest_queued_s"]),
            "yes" if counts["served"] else "NO",
        )
    out.print(accounts)
    for name, lost in data["unserved"].items():
        # One line per account, whatever the terminal's width, so it can be grepped and pasted.
        out.print(
            f"unserved: {lost['queued']} queued and {lost['scheduled']} scheduled jobs of account {name} are on "
            f"{', '.join(lost['queues']) or 'a queue'} that no configured worker consumes (oldest queued "
            f"{lost['oldest_queued_s']} s); move them: attentive-relay requeue --from-account {name} "
            f"(--to-account NAME | --dead-letter)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


@cli.command()
def resume(
    account: Annotated[str, typer.Argument(help="The account whose paused deliveries resume.")],
    destination: Annotated[
        str | None, typer.Option(help="Only at this destination (attentive_rest, attentive_graphql, yotpo).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Lift the pause a 401 or 403 put on an account (fix its token first): its held jobs are
    due at once, and the workers send them."""
    from worker.pause import Pauses

    settings = _settings()
    client = _client(settings)
    lanes, released = Pauses(client).resume(account, destination, int(time.time() * 1000))
    if as_json:
        print(json.dumps({"resumed": lanes, "released": released}))
    elif not lanes and not released:
        err.print(f"{account} is not paused", markup=False, highlight=False)
    else:
        out.print(f"resumed {', '.join(lanes) or account}: {released} held jobs queued", markup=False, highlight=False)


@cli.command()
def requeue(
    from_account: Annotated[str, typer.Option("--from-account", help="Move this account's jobs.")],
    to_account: Annotated[
        str | None, typer.Option("--to-account", help="...onto this configured account's queue, as its jobs.")
    ] = None,
    dead_letter: Annotated[
        bool, typer.Option("--dead-letter", help="...or to the dead-letter queue, as reason unknown_account.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count them; move nothing.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Move the queued, scheduled and waiting jobs of an account no worker serves (removed from
    ATTENTIVE_ACCOUNTS) to another account, or dead-letter them as ``unknown_account``.

    Exactly one of --to-account and --dead-letter. --to-account must be configured; the jobs
    are then that account's (delivered with its token). Moving from a configured account is
    refused: it would send one brand's customers to another's, except --to-account equal to
    --from-account, which moves the jobs left on a queue the settings no longer name (after
    ATTENTIVE_QUEUE was renamed) onto the account's queue. Jobs in flight are left to their
    worker. Prints the jobs found by state, and how many moved or were dead-lettered; exit 1
    when refused (naming the account), 2 on a usage error, 3 when Redis is down.
    """
    from producers.accounts import NAME
    from worker.jobstore import JobStore

    if (to_account is None) == (not dead_letter):
        raise typer.BadParameter("give exactly one of --to-account or --dead-letter")
    if not NAME.match(from_account):
        raise typer.BadParameter("--from-account must be an account name (letters, digits, '-', '_')")
    settings = _settings()
    if to_account is not None:
        _configured(settings, to_account)
    configured = from_account in settings.accounts
    if configured and (dead_letter or to_account != from_account):
        err.print(
            f"account {from_account} is configured (ATTENTIVE_ACCOUNTS): its workers deliver its jobs. Only "
            "jobs of an account no worker serves are moved to another account or dead-lettered",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
    target = to_account or from_account
    store = JobStore(
        _client(settings),
        settings.attentive_queue,
        int(settings.attentive_lease_s * 1000),
        settings.dlq_retention_ms,
        int(settings.attentive_orphan_s * 1000),
    )
    detail = (
        f"account {from_account} is not in ATTENTIVE_ACCOUNTS: no worker consumes its queue; "
        "dead-lettered by attentive-relay requeue"
    )
    found = store.move_jobs(
        from_account,
        to_account,
        settings.queue_for(target),
        detail,
        dry_run,
        erasure_key=erasure.secret(store.client, settings),
        person_ttl_ms=settings.person_index_ms,
    )
    if as_json:
        print(json.dumps(found))
        return
    where = f"to account {to_account}" if to_account else "to the dead-letter queue"
    out.print(
        f"account {from_account}: {found['queued']} queued, {found['scheduled']} scheduled, {found['waiting']} "
        f"waiting, {found['in_flight']} in flight (left alone); "
        + ("nothing moved (dry run)" if dry_run else f"{found['moved'] + found['dead_lettered']} moved {where}"),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
