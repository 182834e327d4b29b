"""A real Flower process watching a real worker: it sees job ids, never personal data.

The broker message carries only the job id (producers/store/message.py), so the task events Flower
records (args, kwargs, result) and everything its API and metrics serve must not contain
the phone number, the email or the property values of a job. Also pins down what Flower
protects with ``--basic-auth`` and what it does not.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from producers.producer import Producer
from worker.counters import stats
from worker.local.processes import free_port

from conftest import env_for, sandbox_requests, wait_for

REPO = Path(__file__).resolve().parent.parent
AUTH = ("user", "secret-pass")
PHONE = "+14155552671"
EMAIL = "leaky.person@example.com"
SECRET_VALUE = "secret-property-value"
LEAKS = (PHONE, PHONE.removeprefix("+1"), EMAIL, SECRET_VALUE)


class Flower:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.proc = proc
        self.url = url
        self.log_path = log_path

    def get(self, path: str, auth: tuple[str, str] | None = AUTH) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", auth=auth, timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def flower(settings, tmp_path: Path) -> Iterator[Flower]:
    port = free_port()
    log_path = tmp_path / "flower.log"
    # Only the worker's settings: no FLOWER_* (say, FLOWER_UNAUTHENTICATED_API) from the developer's shell.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env = {**inherited, **env_for(settings), "PYTHONUNBUFFERED": "1"}
    env["FLOWER_BASIC_AUTH"] = f"{AUTH[0]}:{AUTH[1]}"
    # The way the Procfile and deploy/ start it: the launcher checks the credentials first.
    args = [sys.executable, "-m", "worker.cli", "flower", f"--port={port}", "--address=127.0.0.1"]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Flower(proc, f"http://127.0.0.1:{port}", log_path)
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"flower exited with {proc.returncode}:\n{server.log()}")
            try:
                return server.get("/healthcheck", auth=None).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 30, "flower to answer")
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def test_flower_sees_job_ids_and_no_personal_data(flower, producer: Producer, redis_client, sandbox, start_worker):
    start_worker()
    user = {"phone": PHONE, "email": EMAIL}
    ids = [
        producer.enqueue(
            {
                "kind": "custom_event",
                "type": "Order Placed",
                "user": user,
                "properties": {"note": SECRET_VALUE},
            }
        ),
        producer.enqueue({"kind": "custom_attributes", "user": user, "properties": {"note": SECRET_VALUE}}),
    ]
    wait_for(lambda: stats(redis_client, producer.settings)["delivered"] == 2, 60, "both jobs to be delivered")
    sent = str(sandbox_requests(sandbox))
    assert all(value in sent for value in (PHONE, EMAIL, SECRET_VALUE)), "the personal data did go through the worker"

    def both_succeeded() -> dict | None:
        response = flower.get("/api/tasks")
        assert response.status_code == 200, response.text
        tasks = response.json()
        done = [t for t in tasks.values() if t.get("state") == "SUCCESS"]
        return tasks if len(done) == 2 else None

    tasks = wait_for(both_succeeded, 30, "flower to record both tasks as SUCCESS", interval=0.5)

    assert {t["name"] for t in tasks.values()} == {"attentive.deliver"}
    shown_args = sorted(t["args"] for t in tasks.values())
    assert shown_args == sorted([f"('{ids[0]}',) custom_event", f"('{ids[1]}',) custom_attributes"]), shown_args
    assert sorted(tasks) == sorted(f"{job_id}.0" for job_id in ids), "task ids are tickets <job_id>.<round>"
    assert {t["kwargs"] for t in tasks.values()} == {"{}"}
    assert {t["result"] for t in tasks.values()} == {"'sending'"}, "a task hands its job to the sender threads"

    pages = {"/api/tasks": flower.get("/api/tasks")}
    for task_id in tasks:
        pages[f"/api/task/info/{task_id}"] = flower.get(f"/api/task/info/{task_id}")
        pages[f"/task/{task_id}"] = flower.get(f"/task/{task_id}")  # the HTML page the UI shows

    def worker_listed() -> httpx.Response | None:
        # refresh=1 inspects the workers over the broker (1 s timeout); retry if a reply is late.
        response = flower.get("/api/workers?refresh=1")
        listed = response.status_code == 200 and any(name.startswith("w1@") for name in response.json())
        return response if listed else None

    pages["/api/workers"] = wait_for(worker_listed, 30, "flower to list the worker", interval=0.5)
    pages["/metrics"] = flower.get("/metrics")
    for path, response in pages.items():
        assert response.status_code == 200, (path, response.status_code, response.text[:500])
        for value in LEAKS:
            assert value not in response.text, f"{value!r} appears in {path}"
    for task_id, job_id in zip(sorted(tasks), sorted(ids), strict=True):
        assert job_id in pages[f"/api/task/info/{task_id}"].text
    assert "attentive.deliver" in pages["/api/workers"].json()[tasks[f"{ids[0]}.0"]["worker"]]["registered"]
    assert "flower_events_total{" in pages["/metrics"].text and "attentive.deliver" in pages["/metrics"].text

    # --basic-auth guards the API and the UI ...
    assert flower.get("/api/tasks", auth=None).status_code == 401
    empty = httpx.get(f"{flower.url}/api/tasks", headers={"Authorization": "Basic ="}, timeout=10)
    assert empty.status_code == 401, "the empty credential must not open Flower"
    assert flower.get("/api/tasks", auth=("user", "")).status_code == 401
    assert flower.get("/api/tasks", auth=("user", "wrong")).status_code == 401
    assert flower.get(f"/api/task/info/{ids[0]}.0", auth=None).status_code == 401
    assert flower.get("/api/workers", auth=None).status_code == 401
    assert flower.get("/tasks", auth=None).status_code == 401
    # ... but not /metrics and /healthcheck: Flower 2.x serves both to anyone who can reach its
    # port, credentials or not (deploy/kubernetes/flower.yaml and docker-compose.yml warn about
    # it). /metrics names tasks and workers and counts events (no job ids, no personal data, as
    # checked above); keep the port private or behind an authenticating proxy.
    open_metrics = flower.get("/metrics", auth=None)
    assert open_metrics.status_code == 200 and "flower_events_total" in open_metrics.text
    open_health = flower.get("/healthcheck", auth=None)
    assert open_health.status_code == 200 and open_health.text == "OK"


@pytest.mark.parametrize(
    "value",
    [None, "", " ", "admin:pw,", ",admin:pw", "admin:", ":pw", "admin", "admin:pw,:", "admin:pw, "],
    ids=[
        "unset",
        "empty",
        "blank",
        "trailing-comma",
        "leading-comma",
        "no-password",
        "no-user",
        "no-colon",
        "empty-entry",
        "blank-entry",
    ],
)
def test_flower_refuses_to_start_without_complete_credentials(settings, value):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env.update(env_for(settings))
    if value is not None:
        env["FLOWER_BASIC_AUTH"] = value
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "flower", f"--port={free_port()}", "--address=127.0.0.1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refusing to start Flower" in done.stderr and "FLOWER_BASIC_AUTH" in done.stderr
    assert "pw" not in done.stderr.replace("password", ""), "the value is never echoed"


def test_flower_refuses_its_unauthenticated_api_and_half_an_oauth_setup(settings):
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")} | env_for(settings)
    for extra, rule in (
        ({"FLOWER_BASIC_AUTH": "a:b", "FLOWER_UNAUTHENTICATED_API": "true"}, "FLOWER_UNAUTHENTICATED_API"),
        (
            {"FLOWER_AUTH_PROVIDER": "flower.views.auth.GithubLoginHandler", "FLOWER_AUTH": ".*@example.com"},
            "FLOWER_OAUTH2_KEY",
        ),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli", "flower"],
            cwd=REPO,
            env=base | extra,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and rule in done.stderr, done.stderr


def test_procfile_and_deploy_start_flower_through_the_checking_launcher():
    procfile = (REPO / "Procfile").read_text()
    [web] = [line for line in procfile.splitlines() if line.startswith("web:")]
    assert "attentive-relay flower" in web and "celery -A worker flower" not in web
    for path in ("deploy/docker-compose.yml", "deploy/kubernetes/flower.yaml"):
        text = (REPO / path).read_text()
        assert '"attentive-relay", "flower"' in text, path
        assert '"celery", "-A", "worker", "flower"' not in text, path
