"""``attentive-relay dlq``: inspect, replay and purge dead-lettered jobs."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from producers.accounts import DEFAULT
from worker.cli.context import JsonFlag, _client, _configured, _settings, dlq, err, out

ToAccountOpt = Annotated[
    str | None,
    typer.Option("--to-account", help="Replay entries of accounts no longer configured as this account's jobs."),
]


def _dead_letters() -> Any:
    from worker.deadletter import DeadLetters

    settings = _settings()
    return DeadLetters(_client(settings), settings)


_FILTER_HELP = {
    "since": "Only entries dead-lettered at or after this: an ISO 8601 time (UTC if no zone) or an age (30m, 2h, 7d).",
    "until": "Only entries dead-lettered at or before this: an ISO 8601 time or an age.",
    "reason": "Only entries with this reason.",
    "status": "Only entries whose last attempt got this HTTP status (429) or class (5xx).",
    "kind": "Only jobs of this kind.",
    "account": f"Only the jobs of this account ('{DEFAULT}': the default one).",
    "destination": "Only jobs for this destination: attentive (both APIs), attentive_rest, attentive_graphql, yotpo.",
    "person": "Only jobs that mention this phone number or email (- reads it from stdin); found through the "
    "keyed erasure index, never printed or stored.",
}


def _filtered(command: Any) -> Any:
    """Add the dead-letter filter options (`_FILTER_HELP`) to a ``dlq`` command, which gets the
    store and the parsed `worker.deadletter.Filter` as ``store`` and ``flt``; a bad value exits 2
    naming the option and its rule."""
    import functools
    import inspect

    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name not in ("store", "flt")]
    added = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[str | None, typer.Option(f"--{name}", help=text)],
        )
        for name, text in _FILTER_HELP.items()
    ]

    @functools.wraps(command)
    def run(**options: Any) -> Any:
        from worker.deadletter import FilterError

        values = {name: options.pop(name) for name in _FILTER_HELP}
        if values["person"] == "-":
            values["person"] = sys.stdin.readline()
        store = _dead_letters()
        try:
            flt = store.filter(**values)
        except FilterError as exc:
            err.print(f"invalid {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        return command(store=store, flt=flt, **options)

    run.__signature__ = inspect.Signature([*own, *added])  # type: ignore[attr-defined]
    return run


LimitOpt = Annotated[
    int | None, typer.Option("--limit", min=1, help="At most this many entries (replay and purge: the oldest first).")
]


def _select(store: Any, flt: Any, ids: list[str], all_: bool, limit: int | None = None) -> list[str]:
    """The job ids given (those the filters pass, and those not found), or with ``--all`` every
    entry's the filters pass; oldest first, at most ``limit``."""
    if ids and all_:
        raise typer.BadParameter("give job ids or --all, not both")
    if not ids and not all_:
        raise typer.BadParameter("give job ids or --all")
    chosen = store.choose(flt, ids) if ids else store.ids(flt=flt)[::-1]
    return chosen[:limit] if limit else chosen


@dlq.command("list")
@_filtered
def dlq_list(store: Any, flt: Any, limit: int = 100, as_json: JsonFlag = False) -> None:
    """Dead-lettered jobs, newest first (without their personal data)."""
    from worker.deadletter import account_of_entry

    entries = store.list(limit=limit, flt=flt)
    rows = [
        {k: e.get(k) for k in ("job_id", "reason", "status", "detail", "first_seen", "last_seen")}
        | {
            "kind": e["job"].get("kind") if isinstance(e["job"], dict) else None,
            "account": account_of_entry(e),
            "attempts": len([a for a in e.get("attempts", []) if "attempt" in a]),
        }
        for e in entries
    ]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("job_id", "kind", "account", "reason", "status", "attempts", "last_seen", "detail")
    for r in rows:
        table.add_row(
            r["job_id"],
            str(r["kind"]),
            r["account"],
            r["reason"],
            str(r["status"] or ""),
            str(r["attempts"]),
            r["last_seen"],
            (r["detail"] or "")[:80],
        )
    out.print(table)


@dlq.command("count")
@_filtered
def dlq_count(store: Any, flt: Any, as_json: JsonFlag = False) -> None:
    """How many dead letters the filters pass, in all and by reason: {"count", "by_reason"}."""
    counted = store.count(flt)
    if as_json:
        print(json.dumps(counted))
        return
    by_reason = ", ".join(f"{reason} {n}" for reason, n in counted["by_reason"].items())
    out.print(f"{counted['count']} dead letters" + (f" ({by_reason})" if by_reason else ""))


@dlq.command("show")
def dlq_show(job_id: str) -> None:
    """One entry in full, as JSON (it includes the job and so its personal data)."""
    entry = _dead_letters().show(job_id)
    if entry is None:
        err.print(f"no dead-letter entry {job_id}")
        raise typer.Exit(1)
    print(json.dumps(entry, indent=2))


def _progress(line: str) -> None:
    err.print(line, markup=False, highlight=False, soft_wrap=True)


@dlq.command("replay")
@_filtered
def dlq_replay(
    store: Any,
    flt: Any,
    ids: Annotated[list[str] | None, typer.Argument()] = None,
    all_: Annotated[bool, typer.Option("--all")] = False,
    to_account: ToAccountOpt = None,
    limit: LimitOpt = None,
    include_stale: Annotated[
        bool,
        typer.Option(
            "--include-stale", help="Replay events that would be past the freshness window when sent (a warning)."
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Queue dead-lettered jobs again with a fresh attempt count, each on its account's queue,
    paced behind fresh work (a progress line per chunk on stderr). Resumable: run it again.

    Events that would be stale by the time they are sent are reported and kept (with
    --include-stale, replayed with a warning). An entry whose account is no longer configured is
    refused and kept (exit 1, naming the account), unless --to-account names the account to
    replay it as.
    """
    from worker.deadletter import Replay

    if to_account is not None:
        _configured(store.settings, to_account)
        if flt.account is not None and flt.account in store.settings.accounts and flt.account != to_account:
            raise typer.BadParameter(
                f"account {flt.account} is configured: --to-account only moves entries of accounts that are not"
            )
    chosen = _select(store, flt, ids or [], all_, limit)
    run = Replay(store, to_account, include_stale=include_stale, progress=_progress)
    try:
        result = run.run(chosen)
    except KeyboardInterrupt:
        err.print("interrupted: what was replayed has left the dead-letter queue; run the same command to resume")
        raise typer.Exit(130) from None
    if as_json:
        print(json.dumps({k: len(result[k]) for k in ("replayed", "stale", "missing", "unserved")}))
    else:
        out.print(
            f"replayed {len(result['replayed'])}, still stale {len(result['stale'])}, "
            f"not found {len(result['missing'])}, refused {len(result['unserved'])}"
        )
    if result["stale"]:
        shown = ", ".join(result["stale"][:10]) + (", ..." if len(result["stale"]) > 10 else "")
        _progress(
            f"skipped {len(result['stale'])} stale events (past the {store.settings.attentive_freshness_hours:g} h "
            f"freshness window by the time they would be sent; Attentive would ignore them), kept: {shown}. "
            "--include-stale replays them anyway"
        )
    if run.included_stale:
        _progress(
            f"warning: replayed {len(run.included_stale)} stale events anyway (--include-stale): Attentive "
            "triggers no journey for them, and a worker dead-letters one already past the window again as stale"
        )
    if result["unserved"]:
        err.print(
            f"refused {len(result['unserved'])} entries of account {', '.join(result['unserved_accounts'])}: not in "
            "ATTENTIVE_ACCOUNTS, so no worker consumes its queue; they are kept. Replay them as another "
            "account's with --to-account NAME",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if run.stopped:
        _progress(f"stopped: {run.stopped}")
    raise typer.Exit(1 if (result["missing"] and ids) or result["unserved"] or run.stopped else 0)


@dlq.command("purge")
@_filtered
def dlq_purge(
    store: Any,
    flt: Any,
    ids: Annotated[list[str] | None, typer.Argument()] = None,
    all_: Annotated[bool, typer.Option("--all")] = False,
    limit: LimitOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Delete dead-letter entries for good."""
    purged = store.purge(_select(store, flt, ids or [], all_, limit))
    if as_json:
        print(json.dumps({"purged": purged}))
    else:
        out.print(f"purged {purged}")
