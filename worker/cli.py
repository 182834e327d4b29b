"""``attentive-relay``: enqueue jobs, read counters, work the dead-letter queue, run the sandbox
and the demo. Output with ``--json`` is part of the contract: keys stay stable.

Exit status: 0 on success, 1 when some input was invalid or an entry was not found, 2 on usage
errors (typer's) and input files that cannot be read, 3 when Redis cannot be reached.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, NoReturn

import redis
import typer
from rich.console import Console
from rich.table import Table

from producers import jsonvalues
from producers.accounts import DEFAULT
from producers.connection import from_settings
from producers.errors import ConfigurationError, InvalidJob, Problem
from producers.prepared import PreparedJob
from producers.producer import Producer
from producers.rules import MAX_JOB_BYTES
from producers.segment import Skip
from producers.settings import Settings, load_settings

if TYPE_CHECKING:
    from worker.privacy.store import RequestStore

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
BATCH = 500

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Only entries with this reason.")]
AccountOpt = Annotated[
    str | None, typer.Option("--account", help=f"Only the jobs of this account ('{DEFAULT}': the default one).")
]
ToAccountOpt = Annotated[
    str | None,
    typer.Option("--to-account", help="Replay entries of accounts no longer configured as this account's jobs."),
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


def _open(source: str) -> BinaryIO:
    """The NDJSON input as bytes (``-`` is stdin); one error line and exit 2 when it cannot be opened."""
    if source == "-":
        return sys.stdin.buffer
    try:
        return Path(source).open("rb")
    except OSError as exc:
        _unreadable(source, exc)


def _unreadable(source: str, exc: OSError) -> NoReturn:
    reason = exc.strerror or type(exc).__name__
    err.print(f"cannot read {jsonvalues.printable(source)}: {reason}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(stream, 1):
        if line.strip():
            yield number, line


def _decode_line(line: bytes) -> Any:
    """One NDJSON line as a JSON value; `InvalidJob` when it is too long, not UTF-8 or not JSON."""
    if len(line) > MAX_JOB_BYTES:
        raise InvalidJob([Problem("", f"line is longer than {MAX_JOB_BYTES} bytes")])
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJob([Problem("", "not valid UTF-8 text")]) from None
    try:
        return jsonvalues.loads(text)
    except ValueError:
        raise InvalidJob([Problem("", "not valid JSON")]) from None


@cli.command()
def enqueue(
    source: Annotated[str, typer.Argument(help="NDJSON file, one job or message per line; - for stdin.")] = "-",
    segment: Annotated[
        bool, typer.Option("--segment", help="Lines are Segment messages (track, page, identify), not jobs.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Validate and queue jobs, or Segment messages, from NDJSON: enqueue [FILE|-] [--json] [--segment].

    Every line is read. Each invalid one is reported on stderr with its line number and
    problems (field paths and rules, never values); the valid ones are queued. Exit 1 when a
    line was invalid, 2 when the file cannot be read (one error line), 3 when Redis is down.
    """
    settings = _settings()
    with _open(source) as stream:
        producer = Producer(settings, _client(settings))
        counts, failure = _enqueue_lines(producer, _lines(stream), segment)
    if as_json:
        print(json.dumps(counts))
    elif segment:
        out.print(f"enqueued {counts['enqueued']} jobs, invalid {counts['invalid']}, skipped {counts['skipped']}")
    else:
        out.print(f"enqueued {counts['enqueued']}, invalid {counts['invalid']}")
    if failure is not None:
        _unreadable(source, failure)
    raise typer.Exit(1 if counts["invalid"] else 0)


def _enqueue_lines(
    producer: Producer, lines: Iterator[tuple[int, bytes]], segment: bool
) -> tuple[dict[str, int], OSError | None]:
    """Queue the valid lines in batches of `BATCH`; report each invalid one on stderr.

    Returns the counts (``enqueued``, ``invalid``, and ``skipped`` for Segment messages) and
    the error that stopped reading, if one did; the lines read before it are still queued.
    """
    counts = {"enqueued": 0, "invalid": 0} | ({"skipped": 0} if segment else {})
    batch: list[PreparedJob] = []
    skipped: dict[str, int] = {}
    failure: OSError | None = None
    try:
        for number, line in lines:
            try:
                value = _decode_line(line)
                if not segment:
                    batch.append(producer.prepare(value))
                elif isinstance(prepared := producer.prepare_segment(value), Skip):
                    skipped[prepared.reason] = skipped.get(prepared.reason, 0) + 1
                    counts["skipped"] += 1
                else:
                    batch.extend(prepared)
            except InvalidJob as exc:
                counts["invalid"] += 1
                # one line per refusal whatever the terminal's width, so that it can be grepped
                err.print(f"line {number}: {exc}", markup=False, highlight=False, soft_wrap=True)
            if len(batch) >= BATCH:
                producer.push(batch, skipped)
                counts["enqueued"] += len(batch)
                batch, skipped = [], {}
    except OSError as exc:  # a read error mid-file: keep what was read, then report it
        failure = exc
    producer.push(batch, skipped)
    counts["enqueued"] += len(batch)
    return counts, failure


@cli.command()
def collect(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8788,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(min=1, max=64, help="Server processes (one per core is plenty).")] = 2,
) -> None:
    """Run the Segment-compatible collector (write keys from COLLECTOR_WRITE_KEYS)."""
    from worker.collector import CollectorApp
    from worker.collector_server import exec_serve

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


def _configured(settings: Settings, account: str) -> None:
    """Exit 1 with a message naming ``account`` unless the settings configure it."""
    if account not in settings.accounts:
        err.print(f"account {account} is not in ATTENTIVE_ACCOUNTS", markup=False, highlight=False)
        raise typer.Exit(1)


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
        out.print(f"resumed {', '.join(lanes) or account}: {released} held jobs due now", markup=False, highlight=False)


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
    found = store.move_jobs(from_account, to_account, settings.queue_for(target), detail, dry_run)
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


def _attentive(settings: Settings) -> Any:
    from worker.destinations.attentive_rest import AttentiveRest

    return AttentiveRest(settings)


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
    destination = _attentive(settings)
    for name, account in settings.accounts.items():
        key = "attentive" if name == DEFAULT else f"attentive:{name}"
        if account.token is None or not account.token.get_secret_value():
            result[key] = f"{account.token_setting} is not set"
            continue
        try:
            status = destination.whoami(account)
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

    from producers.rules import check_email, normalize_phone

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
    from producers.erasure import customer_id
    from producers.erasure import erase as erase_person
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
    from producers.erasure import identifier

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
    from worker.sandbox import Sandbox

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

    from worker.metrics import RelayCollector

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

    from worker.dashboard import flower_command

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
    from worker.demo import run_demo

    raise typer.Exit(run_demo(jobs, timeout, out))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
