"""Every bad setting is one `ConfigurationError` naming the setting (the environment variable)
and the rule, never the value, whichever module checks it (issue 18, finding 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from producers import accounts
from producers.errors import ConfigurationError
from producers.job.sensitive_kinds import compile_patterns
from producers.producer import Producer
from producers.settings import Settings, load_settings
from worker.collector.app import CollectorApp
from worker.ops.dashboard import OpenDashboard, flower_arguments

SECRET = "tok-secret-value"


@pytest.mark.parametrize(
    ("environ", "setting", "rule"),
    [
        ({"ATTENTIVE_ACCOUNTS": "not json"}, "ATTENTIVE_ACCOUNTS", "is not valid JSON"),
        ({"ATTENTIVE_ACCOUNTS": json.dumps({"a": {"token": SECRET, "x": 1}})}, "ATTENTIVE_ACCOUNTS", "unknown field"),
        ({"ATTENTIVE_LEASE_S": "5"}, "ATTENTIVE_LEASE_S", "at least ATTENTIVE_TIMEOUT_S + 10"),
        ({"ATTENTIVE_BACKOFF_MAX_S": "0.5"}, "ATTENTIVE_BACKOFF_MAX_S", "at least ATTENTIVE_BACKOFF_BASE_S"),
        ({"ATTENTIVE_JOB_RETENTION_HOURS": "6"}, "ATTENTIVE_JOB_RETENTION_HOURS", "longer than"),
        ({"ATTENTIVE_SENSITIVE_PATTERNS": '{"passport": "([A-Z"}'}, "ATTENTIVE_SENSITIVE_PATTERNS", "'passport'"),
    ],
)
def test_load_settings_names_the_variable_once_and_never_the_value(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], setting: str, rule: str
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    message = str(caught.value)
    assert f"{setting}: " in message or f"{setting} must" in message, message
    assert rule in message and message.count(setting) == 1 + rule.count(setting), message
    assert "settings: settings:" not in message  # a cross-field rule is not filed under "settings"
    assert SECRET not in message and "([A-Z" not in message


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        ("not json", "is not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"default": {"token": "x"}}', "cannot be redefined"),
        ('{"brand a": {}}', "account names must be"),
        (json.dumps({"brand-a": {"token": SECRET, "tokne": 1}}), "account brand-a: unknown field(s) tokne"),
        ('{"brand-a": {"token": 5}}', "account brand-a: token must be a string"),
        (json.dumps({"brand-a": {"token": SECRET, "rate_limit": 0}}), "account brand-a: rate_limit"),
        ('{"brand-a": {"yotpo_store_id": "a b"}}', "account brand-a: yotpo_store_id"),
    ],
)
def test_accounts_parse_names_the_setting_it_was_given(raw: str, rule: str) -> None:
    for setting in ("ATTENTIVE_ACCOUNTS", "ATTENTIVE_ACCOUNTS_FILE"):
        with pytest.raises(ConfigurationError) as caught:
            accounts.parse(raw, setting)
        assert str(caught.value).startswith(f"{setting}: ") and rule in str(caught.value)
        assert SECRET not in str(caught.value)


def test_an_accounts_file_with_bad_json_names_the_file_setting(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "accounts.json").write_text(json.dumps({"brand-a": {"token": SECRET, "tokne": 1}}))
    monkeypatch.setenv("ATTENTIVE_ACCOUNTS_FILE", str(tmp_path / "accounts.json"))
    with pytest.raises(ConfigurationError, match=r"ATTENTIVE_ACCOUNTS_FILE: account brand-a: unknown") as caught:
        load_settings()
    assert SECRET not in str(caught.value)
    with pytest.raises(ConfigurationError, match=r"^ATTENTIVE_ACCOUNTS_FILE: cannot be read"):
        accounts.read_file(tmp_path / "missing.json")


def test_a_bad_sensitive_pattern_compiled_directly_names_the_setting() -> None:
    with pytest.raises(ConfigurationError, match=r"^ATTENTIVE_SENSITIVE_PATTERNS: pattern 'passport'"):
        compile_patterns({"passport": "([A-Z"})


@pytest.mark.parametrize(
    ("write_keys", "rule"),
    [
        ("", "COLLECTOR_WRITE_KEYS is empty"),
        ("k1:brand-z", "COLLECTOR_WRITE_KEYS names account(s) not in ATTENTIVE_ACCOUNTS: brand-z"),
        ("k1:brand-a:x", "COLLECTOR_WRITE_KEYS entry 1: must be KEY or KEY:ACCOUNT"),
        ("k1:bad name", "COLLECTOR_WRITE_KEYS entry 1: the account must be an account name"),
        ("k1:brand-a,k1:default", "COLLECTOR_WRITE_KEYS entry 2: the same key is given accounts"),
    ],
)
def test_bad_write_keys_stop_the_collector_naming_the_setting(write_keys: str, rule: str) -> None:
    settings = Settings(collector_write_keys=write_keys, attentive_accounts=json.dumps({"brand-a": {"token": SECRET}}))
    with pytest.raises(ConfigurationError) as caught:
        CollectorApp(Producer(settings, client=None))
    assert rule in str(caught.value) and "k1" not in str(caught.value)


@pytest.mark.parametrize(
    ("environ", "setting"),
    [
        ({"FLOWER_UNAUTHENTICATED_API": "true", "FLOWER_BASIC_AUTH": "u:p"}, "FLOWER_UNAUTHENTICATED_API"),
        ({"FLOWER_BASIC_AUTH": "admin:pw,"}, "FLOWER_BASIC_AUTH"),
        ({"FLOWER_AUTH_PROVIDER": "google"}, "FLOWER_OAUTH2_KEY"),
        ({}, "FLOWER_BASIC_AUTH"),
    ],
)
def test_an_open_dashboard_is_a_configuration_error_naming_the_setting(environ: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        flower_arguments(environ)
    assert isinstance(caught.value, OpenDashboard) and setting in str(caught.value)
    assert "pw" not in str(caught.value)
