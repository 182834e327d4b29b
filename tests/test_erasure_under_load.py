"""Erasure while workers deliver (issue 16, "Measured"): half of 1,000 people erased while
real `celery worker` processes send their jobs over HTTP to the sandbox."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from test_erasure import everything_in

from producers.producer import Producer
from producers.store.erasure import erase, identifier
from worker.counters import stats
from worker.privacy.forwarder import forwarder_for, person_of
from worker.privacy.store import RequestStore

from conftest import add_fault, finished, make_settings, sandbox_requests, wait_for

PEOPLE = 1000


def email(i: int) -> str:
    return f"person-{i:04d}@shop.example"


def phone(i: int) -> str:
    return f"+1415767{i:04d}"


def customer(i: int) -> str:
    return f"cust-{i:04d}-id"


def jobs_of(i: int) -> list[dict]:
    """Person ``i``'s jobs; every twentieth has an identity call and an event waiting for it, and
    some events fail for good (dead letters) or are held back by a 429 first (scheduled)."""
    user = {"email": email(i), "externalIdentifiers": {"clientUserId": customer(i)}}
    kind = "Doomed" if i % 7 == 0 else "Later" if i % 11 == 0 else "Seen"
    out = [
        {"kind": "custom_event", "type": kind, "user": user, "properties": {"n": i}},
        {"kind": "custom_attributes", "user": {"email": email(i), "phone": phone(i)}, "properties": {"tier": "gold"}},
    ]
    if i % 20 == 0:
        out.insert(0, {"kind": "identity", "email": email(i), "clientUserId": customer(i)})
        out.append(
            {
                "kind": "custom_event",
                "type": "After Identity",
                "user": {"externalIdentifiers": {"clientUserId": customer(i)}},
            }
        )
    return out


def test_half_of_1000_people_erased_while_workers_deliver(redis_server, redis_client, sandbox, start_worker):
    settings = make_settings(
        redis_server.url,
        sandbox.url,
        attentive_rate_limit=2000,
        attentive_rate_limits={"identity": 10},  # as the sandbox plays them
        attentive_max_attempts=2,
        attentive_privacy_poll_s=0.5,
    )
    producer = Producer(settings, redis_client)
    httpx.post(f"{sandbox.url}/__sandbox/config", json={"rate": 2000}).raise_for_status()
    add_fault(sandbox, status=400, type="Doomed", times=10_000)
    add_fault(sandbox, status=429, type="Later", times=PEOPLE // 11 + 1, retry_after=1)
    for start in range(0, PEOPLE, 100):
        producer.enqueue_many([job for i in range(start, start + 100) for job in jobs_of(i)])
    erased = set(range(0, PEOPLE, 2))
    for worker in [start_worker(name, concurrency=2, settings_=settings, wait_ready=0) for name in ("a", "b")]:
        worker.ready()
    wait_for(lambda: stats(redis_client, settings)["delivered"] >= 200, 60, "deliveries under way")

    returned: dict[int, float] = {}
    forwarder = forwarder_for(settings, redis_client)

    def erase_one(i: int) -> None:
        """As `attentive-relay erase --email` does: the requests recorded before the deletion,
        tried once after it."""
        person = identifier(settings, email=email(i))
        recorded: list[dict] = []

        def record(accounts: tuple[str, ...], _people: tuple[str, ...]) -> None:
            recorded.extend(forwarder.record(person_of(redis_client, settings, person), person, accounts))

        erase(redis_client, settings, person, before_delete=record)
        returned[i] = time.time()
        forwarder.attempt(recorded)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(erase_one, sorted(erased)))

    wait_for(
        lambda: (
            finished(redis_client, settings) + stats(redis_client, settings)["erased"]
            >= stats(redis_client, settings)["enqueued"]
        ),
        120,
        "every job to end or be erased",
        0.5,
    )
    store = RequestStore(redis_client)
    wait_for(
        lambda: sum(r.state == "processed" for r in store.list(10 * PEOPLE)) >= len(erased),
        60,
        "every deletion request to be processed",
        0.5,
    )
    requests = store.list(10 * PEOPLE)
    assert all(r.state == "processed" and r.request_id for r in requests), {r.state for r in requests}
    subjects = {r["body"]["subjectEmail"] for r in sandbox.state.privacy.values()}
    assert subjects == {email(i) for i in erased}, "one request per erased person, no one else"
    text = everything_in(redis_client)
    leaks = [i for i in erased if email(i) in text or phone(i) in text or customer(i) in text]
    assert not leaks, f"{len(leaks)} erased people still in Redis, e.g. {leaks[:3]}"

    by_person: dict[int, list[dict]] = {}
    for request in sandbox_requests(sandbox):
        if request["path"].startswith("/v1/privacy/"):
            continue  # the deletion requests come after erase, by design
        body = str(request["body"])
        for token in ("person-", "cust-"):
            if token in body:
                i = int(body.split(token, 1)[1][:4])
                by_person.setdefault(i, []).append(request)
                break
    late = [i for i in erased if any(r["at"] > returned[i] for r in by_person.get(i, []))]
    detail = [
        (r["path"], r["body"].get("type"), r["status"], round(r["at"] - returned[i], 3))
        for i in late[:3]
        for r in by_person[i]
    ]
    assert not late, f"{len(late)} erased people reached the API after erase returned, e.g. {detail}"
    for i in set(range(PEOPLE)) - erased:
        ok = {(r["path"], r["body"].get("type")) for r in by_person.get(i, []) if r["status"] in (200, 202)}
        wanted: set[tuple[str, str | None]] = {("/v1/attributes/custom", None)}
        if i % 7 and i % 11:
            wanted.add(("/v1/events/custom", "Seen"))
        if i % 20 == 0:
            wanted |= {("/v1/identity-resolution/user-identifiers", None), ("/v1/events/custom", "After Identity")}
        assert wanted <= ok, (i, wanted - ok, by_person.get(i), stats(redis_client, settings))
    s = stats(redis_client, settings)
    doomed = sum(1 for i in set(range(PEOPLE)) - erased if i % 7 == 0)
    assert s["dead_letter"].get("rejected", 0) >= doomed
    assert s["delivered"] + sum(s["dead_letter"].values()) + s["erased"] == s["enqueued"], s
