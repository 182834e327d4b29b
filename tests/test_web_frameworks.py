"""The producer inside real web frameworks: a FastAPI app whose endpoints await `producers.aenqueue`
(served through FastAPI's TestClient, an ASGI round trip on its own event loop), and Django views:
a sync one that queues with `producers.enqueue_on_commit` inside ``transaction.atomic()`` (queued
after the commit, never on rollback) and an async one that awaits `producers.aenqueue`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis

import producers
from producers.store import keys

from conftest import env_for, queued_count

EVENT = {"kind": "custom_event", "type": "Order Placed", "user": {"email": "jane@example.com"}}
INVALID = {"kind": "custom_event", "type": "x", "user": {"phone": "555"}}


@pytest.fixture
def relay_env(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment a web app runs with (REDIS_URL, ...), and no default producer built yet."""
    for name, value in env_for(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(producers, "_default", None)
    monkeypatch.setattr(producers, "_async_defaults", {})


# --- FastAPI --------------------------------------------------------------------------------------


def fastapi_app() -> Any:
    from fastapi import Body, FastAPI, HTTPException

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await producers.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/events", status_code=202)
    async def track(job: dict[str, Any] = Body(...)) -> dict[str, str]:  # noqa: B008 - FastAPI's idiom
        try:
            return {"job_id": await producers.aenqueue(job)}
        except producers.InvalidJob as err:
            # The fields and rules, never the values: they may be personal data.
            raise HTTPException(422, detail=[p.field for p in err.problems]) from None

    @app.post("/events/batch")
    async def track_many(jobs: list[dict[str, Any]] = Body(...)) -> list[str | None]:  # noqa: B008
        return [r if isinstance(r, str) else None for r in await producers.aenqueue_many(jobs)]

    @app.post("/segment")
    async def segment(message: dict[str, Any] = Body(...)) -> list[str]:  # noqa: B008
        return await producers.aenqueue_segment(message)

    return app


def test_a_fastapi_endpoint_awaits_aenqueue(relay_env, redis_client):
    from fastapi.testclient import TestClient

    with TestClient(fastapi_app()) as client:
        first = client.post("/events", json=EVENT)
        second = client.post("/events", json={**EVENT, "type": "Order Paid"})
        invalid = client.post("/events", json=INVALID)
        batch = client.post("/events/batch", json=[EVENT, INVALID])
        segment = client.post(
            "/segment", json={"type": "track", "event": "Viewed", "context": {"traits": EVENT["user"]}}
        )
        # Every request ran on the TestClient's one event loop, so one default producer served them.
        assert len(producers._async_defaults) == 1
    assert first.status_code == second.status_code == 202
    assert invalid.status_code == 422 and invalid.json() == {"detail": ["user.phone"]}
    assert batch.status_code == 200 and batch.json()[1] is None
    assert segment.status_code == 200 and len(segment.json()) == 1
    ids = [first.json()["job_id"], second.json()["job_id"], batch.json()[0], *segment.json()]
    assert all(redis_client.hget(keys.job(i), "state") == b"queued" for i in ids)
    assert queued_count(redis_client) == 4
    assert producers._async_defaults == {}, "the lifespan's producers.aclose() dropped the loop's client"


# --- Django ---------------------------------------------------------------------------------------


class PaymentDeclined(Exception):
    pass


@pytest.fixture(scope="module")
def django_db() -> Iterator[None]:
    """Django configured in-process: an in-memory SQLite database with an ``orders`` table."""
    import django
    from django.conf import settings as django_settings
    from django.db import connection

    if not django_settings.configured:
        django_settings.configure(
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            INSTALLED_APPS=[],
            SECRET_KEY="test-only",
            ALLOWED_HOSTS=["testserver"],
            USE_TZ=True,
        )
        django.setup()
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY)")
    yield
    connection.close()


def place_order_view(seen_inside: Callable[[str], None]) -> Callable[..., Any]:
    """A Django view that records an order and queues its event in one transaction.
    ``seen_inside(job_id)`` runs inside the transaction, after the job was handed over."""
    from django.db import connection, transaction
    from django.http import HttpRequest, JsonResponse

    def place_order(request: HttpRequest) -> JsonResponse:
        body = json.loads(request.body)
        try:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute("INSERT INTO orders (id) VALUES (%s)", [body["order"]])
                job_id = producers.enqueue_on_commit(body["job"])
                seen_inside(job_id)
                if body.get("decline"):
                    raise PaymentDeclined
        except PaymentDeclined:
            return JsonResponse({"error": "declined"}, status=402)
        except producers.InvalidJob as err:
            return JsonResponse({"invalid": [p.field for p in err.problems]}, status=422)
        return JsonResponse({"job_id": job_id}, status=201)

    return place_order


def _orders() -> list[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM orders ORDER BY id")
        return [row[0] for row in cursor.fetchall()]


def _post(view: Callable[..., Any], body: dict[str, Any]) -> Any:
    from django.test import RequestFactory

    return view(RequestFactory().post("/orders", data=json.dumps(body), content_type="application/json"))


def test_a_django_view_queues_only_after_the_transaction_commits(relay_env, django_db, redis_client):
    inside: list[bool] = []

    def seen_inside(job_id: str) -> None:
        inside.append(bool(redis_client.exists(keys.job(job_id))))

    view = place_order_view(seen_inside)
    committed = _post(view, {"order": "o-1", "job": EVENT})
    assert committed.status_code == 201 and inside == [False], "queued before the commit"
    job_id = json.loads(committed.content)["job_id"]
    assert redis_client.hget(keys.job(job_id), "state") == b"queued" and queued_count(redis_client) == 1

    declined = _post(view, {"order": "o-2", "job": EVENT, "decline": True})
    assert declined.status_code == 402 and inside == [False, False]
    assert _orders() == ["o-1"], "the order rolled back"
    assert queued_count(redis_client) == 1 and redis_client.hget(keys.STATS, "enqueued") == b"1"

    invalid = _post(view, {"order": "o-3", "job": INVALID})
    assert invalid.status_code == 422 and json.loads(invalid.content) == {"invalid": ["user.phone"]}
    assert _orders() == ["o-1"] and queued_count(redis_client) == 1


def test_enqueue_on_commit_outside_a_transaction_queues_at_once(relay_env, django_db, redis_client):
    job_id = producers.enqueue_on_commit(EVENT)
    assert redis_client.hget(keys.job(job_id), "state") == b"queued"


def test_a_failed_push_in_a_robust_hook_leaves_the_commit_standing(relay_env, django_db, redis_client, monkeypatch):
    from django.db import transaction

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")
    with transaction.atomic():
        with transaction.get_connection().cursor() as cursor:
            cursor.execute("INSERT INTO orders (id) VALUES ('robust')")
        producers.enqueue_on_commit(EVENT, robust=True)
    assert "robust" in _orders() and redis_client.dbsize() == 0
    monkeypatch.setattr(producers, "_default", None)
    with pytest.raises(redis.ConnectionError), transaction.atomic():
        producers.enqueue_on_commit(EVENT)


def test_an_async_django_view_awaits_aenqueue(relay_env, django_db, redis_client):
    from django.http import HttpRequest, JsonResponse
    from django.test import AsyncRequestFactory

    async def track(request: HttpRequest) -> JsonResponse:
        return JsonResponse({"job_id": await producers.aenqueue(json.loads(request.body))}, status=202)

    async def main() -> JsonResponse:
        request = AsyncRequestFactory().post("/events", data=json.dumps(EVENT), content_type="application/json")
        response = await track(request)
        await producers.aclose()
        return response

    response = asyncio.run(main())
    assert response.status_code == 202
    assert redis_client.hget(keys.job(json.loads(response.content)["job_id"]), "state") == b"queued"
