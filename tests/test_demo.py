"""`attentive-relay demo` end to end: two accounts, each request with its own credential."""

from __future__ import annotations

import re

from rich.console import Console

from worker.local.demo import run_demo


def test_the_demo_delivers_for_two_accounts_with_their_own_tokens(redis_server, redis_client, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    out = Console(record=True, width=200)
    assert run_demo(24, 90, out) == 0
    text = out.export_text()
    rows = dict(re.findall(r"│ (default|brand-b)\s+│ (\d+)\s+│", text))
    assert int(rows["default"]) > 0 and int(rows["brand-b"]) > 0
    credentials = re.search(r"Requests by the credential they carried: (.*)", text)
    assert credentials is not None
    seen = dict(
        (name.strip(), int(n)) for name, n in re.findall(r"([a-z -]+(?:\(Yotpo\))?) (\d+)", credentials.group(1))
    )
    assert set(seen) == {"default", "brand-b", "brand-b (Yotpo)"}, seen
