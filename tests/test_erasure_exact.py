"""Erasure that is exact and complete (`producers.store.erasure`): every address validation accepts
is erased as the same person it was queued as, never another; and a person's customer ids,
waiting events, markers and attempts in flight go with them."""

from __future__ import annotations

import json
import time

import hypothesis
import phonenumbers
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import strategies as st
from test_erasure import everything_in

from producers.errors import InvalidJob
from producers.job.rules import _EMAIL
from producers.producer import Producer
from producers.store import keys
from producers.store.erasure import canonical_email, customer_id, erase, identifier, mentions
from worker.counters import stats
from worker.lease import Leases

from conftest import claimed, delivery_for

EXAMPLES = hypothesis.settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: Addresses validation accepts that the first index missed (and one it confused with another).
SEEN = [
    "o'brien@example.com",
    "tom&jerry@example.com",
    "jöe@exämple.com",
    "user@ex_ample.com",
    "a!b#c@example.com",
    "x{y}@example.com",
]


def event(user: dict, type_: str = "Seen") -> dict:
    return {"kind": "custom_event", "type": type_, "user": user}


def queue_for(producer: Producer, email: str) -> str | None:
    """A job for ``email``, or None when validation refuses the address."""
    try:
        return producer.enqueue(event({"email": email}))
    except InvalidJob:
        return None


@pytest.mark.parametrize("email", SEEN)
def test_each_address_the_old_index_missed_is_erased_whole(settings, producer, redis_client, email):
    job_id = producer.enqueue(event({"email": email}, "Private"))
    done = erase(redis_client, settings, identifier(settings, email=email.upper()))
    assert done.jobs == 1 and not redis_client.exists(keys.job(job_id))
    assert email.lower() not in everything_in(redis_client).lower()


def test_a_shorter_address_inside_another_is_another_person(settings, producer, redis_client):
    obrien = producer.enqueue(event({"email": "o'brien@example.com"}))
    brien = producer.enqueue(event({"email": "brien@example.com"}))
    assert erase(redis_client, settings, identifier(settings, email="brien@example.com")).jobs == 1
    assert redis_client.exists(keys.job(obrien)) and not redis_client.exists(keys.job(brien))


emails = st.from_regex(_EMAIL, fullmatch=True).filter(lambda e: len(e) <= 80)


@EXAMPLES
@given(first=emails, second=emails)
@example(first="o'brien@example.com", second="brien@example.com")
@example(first="Jöe@Exämple.com", second="jöe@exämple.org")
def test_erase_takes_exactly_that_person_for_any_accepted_email(settings, redis_client, first, second):
    redis_client.flushdb()
    producer = Producer(settings, redis_client)
    first_id, second_id = queue_for(producer, first), queue_for(producer, second)
    if first_id is None or second_id is None:
        hypothesis.reject()
    same = canonical_email(first) == canonical_email(second)
    erase(redis_client, settings, identifier(settings, email=first))
    assert not redis_client.exists(keys.job(first_id))
    assert bool(redis_client.exists(keys.job(second_id))) is not same, "the other person's job stays"


REGIONS = sorted(r for r in phonenumbers.SUPPORTED_REGIONS if phonenumbers.example_number(r) is not None)
FORMATS = [phonenumbers.PhoneNumberFormat.E164, phonenumbers.PhoneNumberFormat.INTERNATIONAL]


def example_phone(region: str, kind: int) -> phonenumbers.PhoneNumber:
    """The region's example number of ``kind``, else its general example (`REGIONS` all have one)."""
    number = phonenumbers.example_number_for_type(region, kind) or phonenumbers.example_number(region)
    assert number is not None
    return number


@EXAMPLES
@given(
    first=st.sampled_from(REGIONS),
    second=st.sampled_from(REGIONS),
    shape=st.sampled_from(FORMATS),
    mobile=st.booleans(),
)
def test_erase_takes_exactly_that_person_for_any_accepted_phone(settings, redis_client, first, second, shape, mobile):
    redis_client.flushdb()
    producer = Producer(settings, redis_client)
    kind = phonenumbers.PhoneNumberType.MOBILE if mobile else phonenumbers.PhoneNumberType.FIXED_LINE
    numbers = [example_phone(r, kind) for r in (first, second)]
    written = [phonenumbers.format_number(n, shape) for n in numbers]
    try:
        ids = [producer.enqueue(event({"phone": w})) for w in written]
    except InvalidJob:
        hypothesis.reject()
    canonical = [phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164) for n in numbers]
    erase(redis_client, settings, identifier(settings, phone=written[0]))
    assert not redis_client.exists(keys.job(ids[0]))
    assert bool(redis_client.exists(keys.job(ids[1]))) is (canonical[0] != canonical[1])


def test_a_job_holds_its_customer_ids_within_its_account():
    job = (
        '{"kind":"identity","clientUserId":"c-1","shopifyId":"s-1","klaviyoId":"k-1",'
        '"customIdentifiers":[{"name":"loyalty","value":"L9"}],"email":"A@x.org"}'
    )
    assert mentions(job, "brand-b") == {
        "a@x.org",
        customer_id("brand-b", "clientUserId", "c-1"),
        customer_id("brand-b", "shopifyId", "s-1"),
        customer_id("brand-b", "klaviyoId", "k-1"),
        customer_id("brand-b", "custom:loyalty", "L9"),
    }
    yotpo = '{"kind":"yotpo_event","customer":{"external_id":"u-1","phone_number":"+14155552671"}}'
    assert mentions(yotpo, "default") == {"+14155552671", customer_id("default", "yotpo", "u-1")}


def test_erase_follows_the_customer_id_to_the_event_waiting_for_its_identity(settings, producer, redis_client):
    """Identity (phone + clientUserId), then an event known only by that clientUserId: erasing
    the phone erases the waiting event, the marker and the waiter list too."""
    identity = producer.enqueue({"kind": "identity", "phone": "+14155552671", "clientUserId": "cust-42"})
    waiting = producer.enqueue(event({"externalIdentifiers": {"clientUserId": "cust-42"}}, "Waiting"))
    other = producer.enqueue(event({"externalIdentifiers": {"clientUserId": "cust-43"}}, "Someone Else"))
    assert redis_client.hget(keys.job(waiting), "state") == b"waiting"
    done = erase(redis_client, settings, identifier(settings, phone="+14155552671"))
    assert done.jobs == 2
    assert not redis_client.exists(keys.job(identity), keys.job(waiting), keys.waiters(identity))
    assert redis_client.exists(keys.job(other))
    text = everything_in(redis_client)
    assert "cust-42" not in text and "+14155552671" not in text
    assert not redis_client.keys(keys.identity("*")), "the ordering marker went with the identity job"
    assert stats(redis_client, settings)["waiting"] == 0


def test_erase_by_customer_id_alone_stays_in_its_account(redis_server, redis_client, sandbox):
    from conftest import make_settings

    settings = make_settings(redis_server.url, sandbox.url, attentive_accounts=json.dumps({"brand-b": {"token": "t"}}))
    producer = Producer(settings, redis_client)
    mine = producer.enqueue(event({"externalIdentifiers": {"clientUserId": "7"}, "email": "me@x.org"}))
    theirs = producer.enqueue({**event({"externalIdentifiers": {"clientUserId": "7"}}), "account": "brand-b"})
    done = erase(redis_client, settings, ids=[customer_id("default", "clientUserId", "7")])
    assert done.jobs == 1 and done.accounts == ("default",)
    assert not redis_client.exists(keys.job(mine)) and redis_client.exists(keys.job(theirs))


def test_an_attempt_in_flight_is_fenced_once_erase_returns(settings, producer, redis_client):
    """A worker process holding the job with a long local lease would send without asking
    Redis; once erase has returned it asks, and does not send."""
    store = delivery_for(settings, redis_client).store
    leases = Leases(redis_client, store.lease_ms)
    job_id = producer.enqueue(event({"email": "gone@x.org"}))
    now_ms = int(time.time() * 1000)
    claim = claimed(store, job_id, 0, now_ms)
    leases.hold(job_id, claim.ticket, now_ms + store.lease_ms)
    leases.check_epoch()
    assert leases.fence(job_id, claim.ticket, now_ms, need_ms=1_000), "before: no round trip, it would send"
    done = erase(redis_client, settings, identifier(settings, email="gone@x.org"))
    assert done.jobs == 1 and done.fenced_s > 0
    assert not leases.fence(job_id, claim.ticket, int(time.time() * 1000), need_ms=1_000)
    leases.stop()


def test_erase_by_client_user_id_on_the_command_line_forwards_the_emails_its_jobs_held(
    settings, producer, redis_client, sandbox
):
    from test_erasure import erase_cli

    identity = producer.enqueue({"kind": "identity", "email": "Known@X.org", "clientUserId": "cust-9"})
    waiting = producer.enqueue(event({"externalIdentifiers": {"clientUserId": "cust-9"}}, "Waiting"))
    done = erase_cli(settings, "--client-user-id", "-", "--json", stdin="cust-9\n")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["jobs"] == 2 and [f["status"] for f in out["forwarded"]] == ["filed"]
    assert not redis_client.exists(keys.job(identity), keys.job(waiting))
    [filed] = [r["body"] for r in sandbox.state.privacy.values()]
    assert filed["subjectEmail"] == "known@x.org" and "subjectPhone" not in filed
    assert "cust-9" not in everything_in(redis_client) and "known@x.org" not in everything_in(redis_client)
    both = erase_cli(settings, "--client-user-id", "c", "--email", "a@b.org")
    assert both.returncode == 2 and "exactly one" in both.stderr
