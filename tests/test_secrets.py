"""Secrets and URLs stay out of reprs, tracebacks and logs.

The Redis URL may carry a password and the API token is a bearer credential: a repr of the
settings (what a traceback with locals prints), a crash in the CLI, and the worker's logging
set-up must not show them. httpx's own INFO line (one per request, with the full URL) is off.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import httpx

from producers.settings import Settings
from worker.ops import logs

from conftest import TOKEN

PASSWORD = "hunter2-in-the-url"


def test_a_settings_repr_shows_no_url_password_or_token():
    settings = Settings(
        redis_url=f"redis://:{PASSWORD}@127.0.0.1:1/0",
        attentive_rate_limit_redis_url=f"redis://:{PASSWORD}@127.0.0.1:2/0",
        attentive_api_token="a-bearer-token",
    )
    shown = repr(settings) + str(settings) + repr(settings.model_dump())
    assert PASSWORD not in shown and "a-bearer-token" not in shown
    assert settings.redis_url.get_secret_value().startswith("redis://:")


def test_a_cli_crash_prints_no_local_variables(settings, redis_client):
    redis_client.set("relay:stats", "not a hash")  # makes `stats` fail with an unexpected error
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "stats"],
        env={**os.environ, "REDIS_URL": settings.redis_url.get_secret_value(), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "WRONGTYPE" in done.stderr
    assert "as_json = False" not in done.stderr, "locals were printed"


def test_httpx_request_lines_are_not_logged(sandbox, capsys):
    logs.configure(logging.INFO)
    try:
        httpx.get(f"{sandbox.url}/v1/me", headers={"Authorization": f"Bearer {TOKEN}"})
        logging.getLogger("attentive_relay.test").info("still logging")
    finally:
        logs.stop()  # lines are written by a thread of their own: what is queued, now
        logging.getLogger().handlers.clear()
    err = capsys.readouterr().err
    assert "still logging" in err
    assert "HTTP Request" not in err and sandbox.url not in err
