"""Property-based fuzzing of every door untrusted input comes through: `parse_job`,
`Producer.enqueue_many`, `Producer.prepare_segment`, the ``enqueue`` command and the collector.

Inputs are valid jobs and Segment messages, the same with one value swapped for anything
(NaN, Infinity, 1e400, huge integers, lone surrogates, wrong types, nesting, impossible times),
and arbitrary JSON. The invariants:

- nothing raises but `InvalidJob`, and no input is refused by the producer's backstop (that
  would be a bug in a rule);
- a refusal names field paths and rules, prints as UTF-8, and never echoes a value: every
  generated string value carries the marker ``Qz7``, which names never hold;
- a value JSON cannot carry faithfully is refused wherever it sits, never queued as null;
- every valid input is queued exactly once, whatever the invalid inputs next to it hold.

Redis is real (the session's redis-server), the collector answers real HTTP, and the CLI runs
in-process through typer's runner. Each test runs a few hundred examples in CI (a few thousand
jobs in all); ``ATTENTIVE_FUZZ_EXAMPLES=N`` runs N examples per test instead.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import hypothesis
import pytest
import redis
import typer.main
import typer.testing
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from typer.testing import CliRunner

from producers.errors import InvalidJob
from producers.job.models import attentive_body
from producers.job.sensitive import scan
from producers.job.validation import job_json, parse_job
from producers.producer import UNREADABLE, Producer
from producers.settings import Settings
from producers.store import keys, replies
from producers.store.message import job_of, tickets_in
from worker.cli import cli
from worker.collector.background import Collector

from conftest import LOCAL_HTTP, make_settings

hypothesis.settings.register_profile(
    "fuzz",
    deadline=None,
    database=None,  # no .hypothesis/ in the working tree
    print_blob=True,  # a failure prints the @reproduce_failure line that replays it
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def examples(ci: int) -> hypothesis.settings:
    """The fuzz profile with ``ci`` examples, or ``ATTENTIVE_FUZZ_EXAMPLES`` when that is set."""
    wanted = int(os.environ.get("ATTENTIVE_FUZZ_EXAMPLES") or ci)
    return hypothesis.settings(hypothesis.settings.get_profile("fuzz"), max_examples=wanted)


MARK = "Qz7"
LIMIT = 2**53 - 1
LETTERS = "abcdefghijklmnopqrstuvwxyz"

# ---------------------------------------------------------------- oracles


def has_poison(value: Any) -> bool:
    """True when ``value`` holds something JSON cannot carry faithfully (the test's own oracle)."""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, float):
        return not math.isfinite(value) or abs(value) > LIMIT
    if isinstance(value, int):
        return abs(value) > LIMIT
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(not isinstance(k, str) or has_poison(k) or has_poison(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_poison(v) for v in value)
    return False


def assert_clean_refusal(err: InvalidJob) -> None:
    """Problems name paths and rules, print as UTF-8, echo no value and are not the backstop's."""
    assert err.problems
    text = str(err)
    text.encode("utf-8")
    assert MARK not in text, "a refusal echoed a value"
    for problem in err.problems:
        assert isinstance(problem.field, str) and problem.rule
        assert problem.rule != UNREADABLE, "a rule raised something other than InvalidJob"


def nulls(value: Any) -> int:
    """How many nulls ``value`` holds: a queued job may hold those it was given, never more."""
    if isinstance(value, dict):
        return sum(nulls(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(nulls(v) for v in value)
    return value is None


def strict_loads(text: str) -> Any:
    def refuse(token: str) -> Any:
        raise AssertionError(f"{token} in queued JSON")

    return json.loads(text, parse_constant=refuse)


def queued_jobs(client: redis.Redis) -> list[tuple[str, dict[str, Any]]]:
    """(job id, job) for every job queued, read back from its record: each message on the
    queue, then each job waiting for an identity job (it gets a message when that job ends)."""
    ids = [job_of(t) for message in client.lrange("attentive", 0, -1) for t in tickets_in(message)]
    ids += [replies.text(job_id) for job_id in cast("list[bytes]", client.zrange(keys.WAITING, 0, -1))]
    records = [(job_id, client.hget(keys.job(job_id), "job")) for job_id in ids]
    return [(job_id, strict_loads(replies.text(job))) for job_id, job in records if job is not None]


# ---------------------------------------------------------------- strategies

POISON = [
    math.nan,
    math.inf,
    -math.inf,
    2**53,
    -(2**63),
    10**30,
    10**400,
    1e300,
    "\udcff",
    f"{MARK}\ud800",
]
poison = st.sampled_from(POISON)
marked_text = st.text(st.characters(codec="utf-8"), max_size=12).map(lambda s: MARK + s)
names = st.text(st.characters(codec="utf-8", exclude_characters="Q"), max_size=8)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(-1e9, 1e9, allow_nan=False)
    | marked_text
    | poison
)
shallow_json = st.recursive(
    scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(names | st.sampled_from(["k\udcff", 7]), kids, max_size=4)
    ),
    max_leaves=12,
)


def _nest(levels: int, inner: Any, as_list: bool) -> Any:
    for _ in range(levels):
        inner = [inner] if as_list else {"a": inner}
    return inner


# Around the nesting limit and past it; far deeper (100,000 levels) is a regular test, as
# hypothesis prints its examples recursively.
deep_json = st.builds(_nest, st.integers(10, 80), shallow_json, st.booleans())
any_json = shallow_json | deep_json
offsets = st.builds(timezone, st.timedeltas(timedelta(hours=-23, minutes=-59), timedelta(hours=23, minutes=59)))
any_time = (
    st.datetimes(datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59), timezones=offsets).map(datetime.isoformat)
    | st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-02-30T00:00:00Z"])
    | marked_text
)

safe_names = st.text(LETTERS + "_", min_size=1, max_size=10).filter(lambda k: not scan({k: 0}))
safe_scalars = (
    st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(-1e6, 1e6, allow_nan=False)
    | st.text(LETTERS + " ", max_size=20)
)
safe_properties = st.dictionaries(
    safe_names,
    st.recursive(
        safe_scalars,
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(safe_names, kids, max_size=3),
        max_leaves=8,
    ),
    max_size=5,
)
ident = st.text(LETTERS + "0123456789-", min_size=1, max_size=20)
emails = st.text(LETTERS, min_size=1, max_size=10).map(lambda s: f"{s}@example.com")
phones = st.sampled_from(["+14155552671", "(415) 555-2671", "+442079460018", "+447400123456"])
users = st.one_of(
    st.fixed_dictionaries({"phone": phones}),
    st.fixed_dictionaries({"email": emails}),
    st.fixed_dictionaries({"phone": phones, "email": emails}),
    st.fixed_dictionaries({"externalIdentifiers": st.fixed_dictionaries({"clientUserId": ident})}),
)
event_types = st.text(LETTERS + " ", min_size=1, max_size=20).filter(str.strip)


def recent() -> st.SearchStrategy[str]:
    return st.integers(0, 6 * 3600).map(lambda s: (datetime.now(UTC) - timedelta(seconds=s)).isoformat())


prices = st.lists(
    st.fixed_dictionaries(
        {"value": st.integers(0, 10**6) | st.floats(0, 1e6)},
        optional={"currency": st.sampled_from(["USD", "eur", "Gbp"])},
    ),
    min_size=1,
    max_size=2,
)
items = st.lists(
    st.fixed_dictionaries(
        {"productId": ident, "productVariantId": ident, "price": prices},
        optional={"quantity": st.integers(1, 1000), "name": ident},
    ),
    min_size=1,
    max_size=3,
)
snake_names = st.from_regex(r"\A[a-z0-9]{1,8}(_[a-z0-9]{1,8}){0,3}\Z")
yotpo_properties = st.dictionaries(safe_names, safe_scalars, max_size=5)
valid_jobs = st.one_of(
    st.fixed_dictionaries(
        {"kind": st.just("custom_event"), "type": event_types, "user": users},
        optional={"properties": safe_properties, "occurredAt": recent(), "externalEventId": ident},
    ),
    st.fixed_dictionaries(
        {
            "kind": st.just("custom_attributes"),
            "user": users,
            "properties": st.dictionaries(safe_names, safe_scalars, min_size=1, max_size=5),
        }
    ),
    st.fixed_dictionaries(
        {"kind": st.sampled_from(["product_view", "add_to_cart", "purchase"]), "user": users, "items": items},
        optional={"occurredAt": recent()},
    ),
    st.fixed_dictionaries({"kind": st.just("identity"), "clientUserId": ident, "email": emails}),
    st.fixed_dictionaries(
        {
            "kind": st.just("yotpo_custom_event"),
            "source": snake_names,
            "type": snake_names,
            "customer": st.one_of(
                st.fixed_dictionaries({"external_id": ident}, optional={"phone_number": phones, "email": emails}),
                st.fixed_dictionaries({"phone_number": phones}),
                st.fixed_dictionaries({"email": emails}, optional={"properties": yotpo_properties}),
            ),
        },
        optional={"properties": yotpo_properties, "occurred_at": recent(), "event_id": st.uuids().map(str)},
    ),
)


def _slots(value: Any) -> Iterator[tuple[Any, Any]]:
    """(container, key) for every member of every object and array in ``value``."""
    for container, key, _ in _placed_slots(value):
        yield container, key


def _placed_slots(value: Any, path: str = "") -> Iterator[tuple[Any, Any, str]]:
    """(container, key, field path as problems write it) for every member in ``value``."""
    if isinstance(value, dict):
        for key, child in value.items():
            where = f"{path}.{key}" if path else key
            yield value, key, where
            yield from _placed_slots(child, where)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield value, i, f"{path}[{i}]"
            yield from _placed_slots(child, f"{path}[{i}]")


@st.composite
def poisoned(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """A valid input with one member made a value JSON cannot carry, and that member's path."""
    value = copy.deepcopy(draw(base))
    container, key, path = draw(st.sampled_from(list(_placed_slots(value))))
    container[key] = draw(poison)
    return value, path


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid input with one member replaced by anything, removed, or a time made strange."""
    value = copy.deepcopy(draw(base))
    container, key = draw(st.sampled_from(list(_slots(value))))
    action = draw(st.sampled_from(["replace", "replace", "poison", "time", "drop"]))
    if action == "drop" and isinstance(container, dict):
        del container[key]
    elif action == "time":
        container[key] = draw(any_time)
    else:
        container[key] = draw(poison if action == "poison" else any_json)
    return value


any_job = mutated(valid_jobs) | st.dictionaries(names, any_json, max_size=5) | any_json


@st.composite
def python_job(draw: st.DrawFn) -> dict[str, Any]:
    """A valid job with one member replaced by a Python value JSON has no word for."""
    job = copy.deepcopy(draw(valid_jobs))
    container, key = draw(st.sampled_from(list(_slots(job))))
    container[key] = draw(
        st.decimals()
        | st.binary(max_size=8)
        | st.datetimes()
        | st.complex_numbers()
        | st.frozensets(st.integers(0, 3), max_size=2)
        | st.builds(object)
    )
    return job


# What a web app can hand `Producer.enqueue` without JSON in between.
any_python_job = any_job | python_job()

segment_ids = st.uuids().map(str)


def valid_tracks() -> st.SearchStrategy[dict[str, Any]]:
    """Segment messages that make exactly one job each, tagged by a unique messageId."""
    traits = st.fixed_dictionaries({}, optional={"email": emails, "phone": phones})
    base = {
        "userId": ident.map(lambda s: f"u-{s}"),
        "messageId": segment_ids,
        "context": traits.map(lambda t: {"traits": t}),
    }
    custom = st.fixed_dictionaries(
        {"type": st.just("track"), "event": event_types, **base},
        optional={"properties": safe_properties, "timestamp": recent()},
    )
    page = st.fixed_dictionaries({"type": st.just("page"), **base}, optional={"name": event_types})
    return custom | page


valid_messages = valid_tracks()
product_viewed = st.fixed_dictionaries(
    {
        "type": st.just("track"),
        "userId": st.just("u-1"),
        "event": st.just("Product Viewed"),
        "properties": st.fixed_dictionaries(
            {"product_id": ident, "price": st.floats(0, 1e6)}, optional={"quantity": st.integers(1, 100)}
        ),
    }
)
identifies = st.fixed_dictionaries(
    {
        "type": st.just("identify"),
        "userId": ident.map(lambda s: f"u-{s}"),
        "traits": st.fixed_dictionaries({"email": emails}, optional={"username": ident, "plan": safe_scalars}),
    }
)
any_message = (
    mutated(valid_messages)
    | mutated(product_viewed)
    | mutated(identifies)
    | st.dictionaries(names, any_json, max_size=4)
    | any_json
)

# ---------------------------------------------------------------- parse_job

SETTINGS = make_settings("redis://127.0.0.1:9/0")


@examples(800)
@given(job=any_python_job, as_text=st.booleans())
def test_parse_job_refuses_cleanly_or_accepts_something_sendable(job: Any, as_text: bool) -> None:
    data: Any = job
    if as_text and not isinstance(job, str):  # NaN and Infinity as bare tokens; keys become strings
        try:
            data = json.dumps(job, allow_nan=True)
        except TypeError:  # a Python value JSON has no word for: given as it is
            data = job
        else:
            job = json.loads(data)
    try:
        model = parse_job(data, SETTINGS, datetime.now(UTC), at_enqueue=True)
    except InvalidJob as err:
        assert_clean_refusal(err)
        return
    assert not has_poison(job), "a value JSON cannot carry was accepted"
    stored = strict_loads(job_json(model))
    assert nulls(stored) <= nulls(job), "a value was turned into null"
    assert nulls(attentive_body(model)) <= nulls(job)
    if isinstance(job, dict) and isinstance(job.get("properties"), dict):
        assert stored["properties"] == job["properties"], "a property value was altered"


@examples(250)
@given(job=valid_jobs)
def test_every_valid_job_is_accepted(job: dict[str, Any]) -> None:
    parse_job(job, SETTINGS, datetime.now(UTC), at_enqueue=True)


@examples(300)
@given(message=any_message, rename_keys=st.booleans())
def test_prepare_segment_refuses_cleanly_or_maps(message: Any, rename_keys: bool, producer: Producer) -> None:
    if rename_keys:
        renaming = producer.settings.model_copy(update={"attentive_segment_rename_keys": True})
        producer = Producer(renaming, producer.client)
    try:
        producer.prepare_segment(message)
    except InvalidJob as err:
        assert_clean_refusal(err)
        return
    assert not has_poison(message), "a Segment message with a value JSON cannot carry was accepted"


@examples(200)
@given(case=poisoned(valid_jobs) | poisoned(valid_messages) | poisoned(product_viewed), as_text=st.booleans())
def test_a_value_json_cannot_carry_is_refused_at_its_path(
    case: tuple[dict[str, Any], str], as_text: bool, producer: Producer
) -> None:
    value, path = case
    data = json.dumps(value, allow_nan=True) if as_text else value
    with pytest.raises(InvalidJob) as caught:
        if "kind" in value:
            producer.prepare(data)
        else:
            producer.prepare_segment(json.loads(data) if isinstance(data, str) else data)
    assert_clean_refusal(caught.value)
    assert path in [p.field for p in caught.value.problems]


# ---------------------------------------------------------------- enqueue_many, real Redis

batches = st.lists(st.tuples(st.booleans(), valid_jobs, any_python_job), min_size=1, max_size=8)


@examples(200)
@given(batch=batches)
def test_enqueue_many_queues_each_valid_job_once_whatever_its_neighbours_hold(
    batch: list[tuple[bool, dict[str, Any], Any]], producer: Producer, redis_client: redis.Redis
) -> None:
    redis_client.flushdb()
    jobs = [good if is_good else bad for is_good, good, bad in batch]
    results = producer.enqueue_many(jobs)
    assert len(results) == len(jobs)
    for (is_good, _, _), job, result in zip(batch, jobs, results, strict=True):
        if is_good:
            assert isinstance(result, str), f"a valid job was refused: {result}"
        if isinstance(result, InvalidJob):
            assert_clean_refusal(result)
        else:
            assert not has_poison(job)
    queued = {job_id: job for job_id, job in queued_jobs(redis_client)}
    accepted = [(job, r) for job, r in zip(jobs, results, strict=True) if isinstance(r, str)]
    assert sorted(queued) == sorted(r for _, r in accepted), "a job was queued other than once"
    for job, job_id in accepted:
        assert nulls(queued[job_id]) <= nulls(job), "a value was turned into null"


# ---------------------------------------------------------------- the enqueue command, in-process


def ndjson_line(draw: st.DrawFn, segment: bool) -> tuple[bytes, bool | None]:
    """A line and whether it is valid (None: it may be either)."""
    kind = draw(st.sampled_from(["valid", "valid", "any", "bytes", "truncated"]))
    if kind == "valid":
        return json.dumps(draw(valid_messages if segment else valid_jobs)).encode(), True
    if kind == "bytes":
        return draw(st.binary(min_size=1, max_size=40)).replace(b"\n", b" "), None
    text = json.dumps(draw(any_message if segment else any_job), allow_nan=True).encode()
    return (text[: len(text) // 2] if kind == "truncated" else text), None


@st.composite
def ndjson_files(draw: st.DrawFn, segment: bool) -> list[tuple[bytes, bool | None]]:
    return [ndjson_line(draw, segment) for _ in range(draw(st.integers(1, 12)))]


@st.composite
def enqueue_runs(draw: st.DrawFn) -> tuple[list[str], list[tuple[bytes, bool | None]]]:
    """The command's arguments, options in any order, and the lines on its stdin."""
    segment = draw(st.booleans())
    args = draw(st.permutations(["-", "--json", *(["--segment"] if segment else [])]))
    return ["enqueue", *args], draw(ndjson_files(segment))


@pytest.fixture
def cli_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """typer's runner builds the click command from ``cli`` on every invoke, about 45 ms: once is enough."""
    built = typer.main.get_command(cli)
    monkeypatch.setattr(typer.testing, "_get_command", lambda app: built if app is cli else typer.main.get_command(app))


@pytest.mark.usefixtures("cli_built_once")
@examples(120)
@given(run=enqueue_runs())
def test_enqueue_command_reads_every_line_and_queues_the_valid_ones(
    run: tuple[list[str], list[tuple[bytes, bool | None]]], settings: Settings, redis_client: redis.Redis
) -> None:
    redis_client.flushdb()
    args, lines = run
    stdin = b"\n".join(line for line, _ in lines) + b"\n"
    result = CliRunner().invoke(cli, args, input=stdin, env={"REDIS_URL": settings.redis_url.get_secret_value()})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    summary = json.loads(result.stdout)
    read = [(n, valid) for n, (line, valid) in enumerate(lines, 1) if line.strip()]
    reported = {int(line.split(":")[0][5:]) for line in result.stderr.splitlines() if line.startswith("line ")}
    if "--segment" in args:  # a line is one message: queued (one job or two), skipped, or refused
        assert summary["enqueued"] >= len(read) - summary["invalid"] - summary["skipped"]
    else:
        assert summary["enqueued"] + summary["invalid"] == len(read)
    assert summary["invalid"] == len(reported) and result.exit_code == (1 if reported else 0)
    assert not {n for n, valid in read if valid} & reported, "a valid line was refused"
    assert MARK not in result.stderr
    assert len(queued_jobs(redis_client)) == summary["enqueued"]


# ---------------------------------------------------------------- the collector, real HTTP

KEY = "fuzz-key"


@pytest.fixture
def collector(redis_server: Any, redis_client: redis.Redis) -> Iterator[Collector]:
    with Collector(Producer(make_settings(redis_server.url, collector_write_keys=KEY), redis_client), port=0) as c:
        yield c


TRACK = '{"type": "track", "userId": "u-1", "event": "X", "properties": '
# Valid JSON that Python's parser alone cannot read: a 5,000-digit number, 3,000 levels deep.
long_numbers = st.integers(4301, 6000).map(lambda n: TRACK + '{"n": ' + "9" * n + "}}")
deep_arrays = st.integers(1000, 4000).map(lambda n: TRACK + '{"d": ' + "[" * n + "]" * n + "}}")
hostile_texts = long_numbers | deep_arrays
batch_members = st.tuples(st.sampled_from(["good", "good", "bad", "bad", "hostile"]), valid_messages, any_message)


@examples(100)
@given(batch=st.lists(batch_members, min_size=1, max_size=8), hostile=hostile_texts)
def test_collector_answers_every_batch_and_queues_its_valid_messages_once(
    batch: list[tuple[str, dict[str, Any], Any]], hostile: str, collector: Collector, redis_client: redis.Redis
) -> None:
    redis_client.flushdb()
    goods = [{**good, "messageId": f"good-{i}"} for i, (role, good, _) in enumerate(batch) if role == "good"]
    texts = [
        json.dumps({**good, "messageId": f"good-{i}"})
        if role == "good"
        else hostile
        if role == "hostile"
        else json.dumps(bad, allow_nan=True)
        for i, (role, good, bad) in enumerate(batch)
    ]
    response = LOCAL_HTTP.post(
        collector.url + "/v1/batch",
        content=('{"batch": [' + ", ".join(texts) + "]}").encode(),
        auth=(KEY, ""),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code in (200, 400), response.text
    answer = response.json()
    problems = answer.get("problems", [])
    assert (response.status_code == 400) == bool(problems)
    assert MARK not in response.text
    assert all(p["rule"] != UNREADABLE and isinstance(p["field"], str) for p in problems)
    refused = {p["index"] for p in problems}
    for index, ((role, _, _), text) in enumerate(zip(batch, texts, strict=True)):
        if role == "good":
            assert index not in refused, f"a valid message was refused: {problems}"
        elif role == "hostile" or has_poison(json.loads(text)):
            assert index in refused, "a message with a value JSON cannot carry was accepted"
    queued = queued_jobs(redis_client)
    assert len(queued) == answer["accepted"]
    event_ids = [job.get("externalEventId") for _, job in queued]
    for good in goods:
        assert event_ids.count(good["messageId"]) == 1, "a valid message was not queued exactly once"
