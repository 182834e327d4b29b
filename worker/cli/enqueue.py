"""``attentive-relay enqueue``: validate and queue jobs, or Segment messages, from NDJSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO, NoReturn

import typer

from producers.errors import InvalidJob, Problem
from producers.job import jsonvalues
from producers.job.rules import MAX_JOB_BYTES
from producers.prepared import PreparedJob
from producers.producer import Producer
from producers.segment.mapping import Skip
from worker.cli.context import JsonFlag, _client, _settings, cli, err, out

BATCH = 500


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
