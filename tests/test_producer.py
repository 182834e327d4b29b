"""What a web app pays to import and use the producers package."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis
from pydantic import SecretStr

import producers
from producers.producer import Producer
from producers.segment.mapping import Skip
from producers.store import keys

from conftest import queued_count


def test_importing_producers_loads_no_http_client_no_celery_and_opens_no_connection():
    code = (
        "import sys, socket\n"
        "opened = []\n"
        "real = socket.socket.connect\n"
        "socket.socket.connect = lambda self, *a: opened.append(a) or real(self, *a)\n"
        "import producers\n"
        "producers.Producer()\n"
        "print(sorted(m for m in ('httpx', 'celery', 'kombu', 'worker') if m in sys.modules), opened)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] []"


def test_invalid_job_is_a_value_error_and_nothing_is_queued(producer: Producer, redis_client):
    with pytest.raises(ValueError) as caught:
        producer.enqueue({"kind": "custom_event", "type": "x", "user": {"phone": "555"}})
    assert isinstance(caught.value, producers.InvalidJob)
    assert [p.field for p in caught.value.problems] == ["user.phone"]
    assert queued_count(redis_client, "attentive") == 0 and not redis_client.exists(keys.STATS)


def test_unreachable_redis_raises_and_nothing_is_half_written(settings):
    producer = Producer(settings.model_copy(update={"redis_url": SecretStr("redis://127.0.0.1:9/0")}))
    with pytest.raises(redis.ConnectionError):
        producer.enqueue({"kind": "custom_event", "type": "x", "user": {"email": "a@example.com"}})


def test_enqueue_accepts_json_text_and_models(producer: Producer, redis_client):
    from producers.job.models import CustomAttributes, User

    model = CustomAttributes(user=User(email="a@example.com"), properties={"vip": True})
    first = producer.enqueue(model)
    second = producer.enqueue(json.dumps({"kind": "identity", "clientUserId": "c1", "email": "a@example.com"}))
    assert json.loads(redis_client.hget(keys.job(first), "job"))["properties"] == {"vip": True}
    assert redis_client.hget(keys.job(second), "kind") == b"identity"


@pytest.mark.parametrize(("region", "client_user_id"), [("GB", None), ("US", "07911123456")])
def test_segment_user_ids_are_read_as_phone_numbers_in_the_default_region(redis_server, region, client_user_id):
    from conftest import make_settings

    producer = Producer(make_settings(redis_server.url, attentive_default_region=region))
    message = {"type": "track", "event": "Signed Up", "userId": "07911123456", "traits": {"email": "a@example.com"}}
    prepared = producer.prepare_segment(message)
    assert not isinstance(prepared, Skip)
    [(_, _, job_json)] = prepared
    external = json.loads(job_json)["user"].get("externalIdentifiers", {})
    assert external.get("clientUserId") == client_user_id
