"""deploy/: the Kubernetes manifests, the KEDA ScaledObject, docker-compose.yml and the Dockerfile,
and the hash-pinned lock files they and scripts/install install from.

Everything is checked offline against real schemas: the Kubernetes OpenAPI schemas shipped with
kubernetes-validate (strict: unknown fields fail), a schema written here for the ScaledObject
fields we use (KEDA's CRD is not in kubernetes-validate), and the Compose specification vendored
in deploy/schema/. The cross-checks then tie the files to each other and to the code: queue
names, grace periods, env var names, image and user, CLI subcommands, which secrets each role
reads, which pods the NetworkPolicies let reach Redis, pinned images, and the locks against
pyproject.toml.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import typer
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from producers.settings import Settings
from worker.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_SPEC = DEPLOY / "schema" / "compose_spec.json"
# compose/config/compose_spec.json from the docker-compose 1.29.2 wheel, unchanged.
COMPOSE_SPEC_SHA256 = "0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac"
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements" / "lock.txt"
TEST_LOCK = ROOT / "requirements" / "test-lock.txt"

NAMESPACE = "attentive-relay"
WORKER = "attentive-relay-worker"
FLOWER = "attentive-relay-flower"
COLLECTOR = "attentive-relay-collector"
CONFIG = "attentive-relay-config"
SECRETS = "attentive-relay-secrets"
REDIS = "redis"
REDIS_PORT = 6379
# The secrets each role reads, and no others.
ROLE_SECRETS = {
    WORKER: {"REDIS_URL", "ATTENTIVE_API_TOKEN", "ATTENTIVE_ACCOUNTS", "SENTRY_DSN"},
    FLOWER: {"REDIS_URL", "FLOWER_BASIC_AUTH"},
    COLLECTOR: {"REDIS_URL", "COLLECTOR_WRITE_KEYS"},
}

# An older Kubernetes minor still found on managed clusters, and the newest schema shipped.
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
# The worker's soft shutdown timeout (the Celery setting, when configured, if it is longer).
SOFT_SHUTDOWN_S = 60
SHUTDOWN_MARGIN_S = 15
# Environment variables that are not Settings fields but are read by something we run.
NON_SETTINGS_ENV = {
    "FLOWER_BASIC_AUTH",  # Flower reads FLOWER_* options
    "SENTRY_DSN",  # worker/ops/sentry.py
    "SENTRY_ENVIRONMENT",  # worker/ops/sentry.py
    "REMAP_SIGTERM",  # billiard/Celery: SIGTERM starts the (soft) cold shutdown
    "PYTHONUNBUFFERED",  # CPython
}
SETTINGS_ENV = {name.upper() for name in Settings.model_fields}
PLACEHOLDER = "REPLACE_ME"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_all(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.load_all(f, Loader=_UniqueKeyLoader) if doc is not None]


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in sorted(K8S.glob("*.yaml")) for doc in _load_all(path)]


MANIFESTS = _manifests()
BUILTIN = [(f, obj) for f, obj in MANIFESTS if not obj["apiVersion"].startswith("keda.sh/")]


def _id(item: tuple[str, dict[str, Any]]) -> str:
    f, obj = item
    return f"{f}:{obj['kind']}/{obj['metadata']['name']}"


def _obj(kind: str, name: str) -> dict[str, Any]:
    found = [o for _, o in MANIFESTS if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name} in deploy/kubernetes, found {len(found)}"
    return found[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _option(argv: list[str], *names: str) -> str:
    """The value of a command-line option given as `-Q x`, `--port x` or `--port=x`."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name:
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    raise AssertionError(f"{names} not in {argv}")


def _configmap() -> dict[str, str]:
    return _obj("ConfigMap", CONFIG)["data"]


def _secret() -> dict[str, str]:
    return _obj("Secret", SECRETS)["stringData"]


def _redis_url() -> str:
    """Every role's REDIS_URL: a Secret key, since it carries Redis' password when there is one."""
    return _secret()["REDIS_URL"]


def _secret_keys_read(container: dict[str, Any]) -> set[str]:
    """Every Secret key a container gets: key by key (secretKeyRef) or whole Secrets (envFrom)."""
    objects = {(o["kind"], o["metadata"]["name"]): o for _, o in MANIFESTS}
    keys = set()
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            keys |= set(objects["Secret", source["secretRef"]["name"]]["stringData"])
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            keys.add(ref["key"])
    return keys


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels and matchExpressions) selects labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _pods() -> dict[str, dict[str, str]]:
    """The pod template labels of every Deployment and StatefulSet, by workload name."""
    return {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for _, o in MANIFESTS
        if o["kind"] in ("Deployment", "StatefulSet")
    }


def _policies() -> list[dict[str, Any]]:
    return [o for _, o in MANIFESTS if o["kind"] == "NetworkPolicy"]


def _ingress_rules_for(labels: dict[str, str]) -> list[dict[str, Any]]:
    """The ingress rules that admit traffic to a pod with these labels (policies are additive)."""
    return [
        rule
        for policy in _policies()
        if "Ingress" in policy["spec"].get("policyTypes", ["Ingress"])
        and _selects(policy["spec"]["podSelector"], labels)
        for rule in policy["spec"].get("ingress", [])
    ]


def _soft_shutdown_s() -> float:
    from worker.app import app

    return max(SOFT_SHUTDOWN_S, float(app.conf.worker_soft_shutdown_timeout or 0))


def _seconds(duration: str) -> float:
    """A Compose duration ("90s", "1m30s", "1h") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a Compose duration: {duration!r}"
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * unit[u] for n, u in parts)


# --- Kubernetes: schemas ------------------------------------------------------------------------


def test_manifests_hold_every_role_in_one_namespace() -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for _, o in MANIFESTS}
    for expected in [
        ("ConfigMap", CONFIG),
        ("Secret", SECRETS),
        ("Deployment", WORKER),
        ("ScaledObject", WORKER),
        ("Deployment", FLOWER),
        ("Service", FLOWER),
        ("Deployment", COLLECTOR),
        ("Service", COLLECTOR),
        ("NetworkPolicy", "default-deny-ingress"),
        ("NetworkPolicy", REDIS),
    ]:
        assert expected in kinds
    for f, obj in MANIFESTS:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{f}: {obj['kind']} outside {NAMESPACE}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("item", BUILTIN, ids=_id)
def test_builtin_objects_validate_strictly(item: tuple[str, dict[str, Any]], version: str) -> None:
    _, obj = item
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        problem = f"at /{'/'.join(str(p) for p in exc.absolute_path)}: {exc.message}"
    else:
        return
    pytest.fail(f"{_id(item)} is invalid for Kubernetes {version} {problem}")


def test_selectors_match_their_pod_templates() -> None:
    pods = {}
    for _, obj in MANIFESTS:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items(), obj["metadata"]["name"]
            pods[obj["metadata"]["name"]] = labels
    for _, svc in MANIFESTS:
        if svc["kind"] == "Service":
            selected = [n for n, labels in pods.items() if svc["spec"]["selector"].items() <= labels.items()]
            assert len(selected) == 1, f"Service {svc['metadata']['name']} selects {selected}"


# --- KEDA ScaledObject --------------------------------------------------------------------------

_DNS_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {"name": _DNS_NAME, "namespace": _DNS_NAME, "labels": {"type": "object"}},
        },
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "minReplicaCount", "maxReplicaCount", "triggers"],
            # The fields of KEDA's ScaledObjectSpec; a typo fails instead of being ignored.
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": _DNS_NAME,
                        "kind": {"const": "Deployment"},
                        "apiVersion": {"const": "apps/v1"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "advanced": {"type": "object"},
                "fallback": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string", "minLength": 1},
                            "name": {"type": "string"},
                            "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            # map[string]string in KEDA's CRD: numbers must be quoted.
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                            },
                        },
                        "additionalProperties": False,
                        "if": {"properties": {"type": {"const": "redis"}}},
                        "then": {
                            "properties": {
                                "metadata": {
                                    "required": ["address", "listName", "listLength"],
                                    "properties": {
                                        "address": {"pattern": r"^[A-Za-z0-9.-]+:[0-9]{1,5}$"},
                                        "listName": {"minLength": 1},
                                        "listLength": {"pattern": r"^[1-9][0-9]*$"},
                                        "activationListLength": {"pattern": r"^[0-9]+$"},
                                        "databaseIndex": {"pattern": r"^[0-9]+$"},
                                        "enableTLS": {"enum": ["true", "false"]},
                                    },
                                }
                            }
                        },
                    },
                    "contains": {"properties": {"type": {"const": "redis"}}},
                },
            },
        },
    },
}


def _scaled_object() -> dict[str, Any]:
    return _obj("ScaledObject", WORKER)


def _redis_triggers() -> list[dict[str, str]]:
    return [t["metadata"] for t in _scaled_object()["spec"]["triggers"] if t["type"] == "redis"]


def _redis_trigger() -> dict[str, str]:
    """The trigger on the default account's queue."""
    queue = _configmap().get("ATTENTIVE_QUEUE", Settings.model_fields["attentive_queue"].default)
    (trigger,) = [t for t in _redis_triggers() if t["listName"] == queue]
    return trigger


def test_scaledobject_matches_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCALED_OBJECT_SCHEMA)
    so = _scaled_object()
    jsonschema.Draft202012Validator(SCALED_OBJECT_SCHEMA).validate(so)
    spec = so["spec"]
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]


def test_scaledobject_scales_the_worker_on_its_queue() -> None:
    so = _scaled_object()
    worker = _obj("Deployment", WORKER)
    assert so["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert so["metadata"]["namespace"] == worker["metadata"]["namespace"]
    queue = _configmap().get("ATTENTIVE_QUEUE", Settings.model_fields["attentive_queue"].default)
    assert queue == "attentive"
    assert _redis_trigger()["listName"] == queue
    # The worker consumes every account's queue, from the settings: no -Q to keep in step.
    assert not {"-Q", "--queues"} & {a.split("=")[0] for a in _container(worker)["command"]}
    # The workers' promoters put due retries back on the list: with zero workers the list never
    # grows and nothing would ever scale the pool up again.
    assert so["spec"]["minReplicaCount"] >= 1


def test_scaledobject_has_a_trigger_for_each_accounts_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """One redis trigger per account queue of the ConfigMap's ATTENTIVE_ACCOUNTS (KEDA takes the
    largest), each on the same Redis, and no trigger on a queue no account has."""
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in _configmap().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("REDIS_URL", _redis_url())
    settings = Settings()
    triggers = _redis_triggers()
    assert sorted(t["listName"] for t in triggers) == sorted(settings.queues)
    assert len({(t["address"], t.get("databaseIndex", "0"), t["listLength"]) for t in triggers}) == 1
    text = (K8S / "worker-scaledobject.yaml").read_text(encoding="utf-8")
    assert "ONE TRIGGER PER ACCOUNT" in text and "MAX across triggers" in text


def test_accounts_tokens_reach_only_workers_and_names_reach_every_role() -> None:
    """ATTENTIVE_ACCOUNTS holds tokens: a Secret key the worker alone reads; the ConfigMap's copy
    names the accounts without tokens, for the collector's write keys and the producers."""
    assert json.loads(_configmap()["ATTENTIVE_ACCOUNTS"]) is not None
    assert all(not spec.get("token") for spec in json.loads(_configmap()["ATTENTIVE_ACCOUNTS"]).values())
    assert "ATTENTIVE_ACCOUNTS" in _secret()
    for name in (FLOWER, COLLECTOR):
        assert "ATTENTIVE_ACCOUNTS" not in _secret_keys_read(_container(_obj("Deployment", name))), name
    env = {e["name"]: e for e in _container(_obj("Deployment", WORKER))["env"]}
    assert env["ATTENTIVE_ACCOUNTS"]["valueFrom"]["secretKeyRef"] == {"name": SECRETS, "key": "ATTENTIVE_ACCOUNTS"}


def test_procfile_and_compose_workers_consume_every_accounts_queue() -> None:
    [worker] = [line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("worker:")]
    assert " -Q" not in worker and "--queues" not in worker
    compose = _compose()["services"]["worker"]
    assert "-Q" not in compose["command"]
    assert "${ATTENTIVE_ACCOUNTS" in compose["environment"]["ATTENTIVE_ACCOUNTS"]


def test_scaledobject_watches_the_redis_of_redis_url() -> None:
    url = urlsplit(_redis_url())
    assert url.scheme == "redis"
    host, port = _redis_trigger()["address"].rsplit(":", 1)
    # KEDA runs in its own namespace, so the address is the FQDN of the same Service.
    assert host in (url.hostname, f"{url.hostname}.{NAMESPACE}.svc.cluster.local")
    assert int(port) == (url.port or 6379)
    assert _redis_trigger().get("databaseIndex", "0") == (url.path.lstrip("/") or "0")


# --- Kubernetes: the worker and the other roles -------------------------------------------------


def test_worker_grace_period_covers_soft_shutdown() -> None:
    worker = _obj("Deployment", WORKER)
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= SOFT_SHUTDOWN_S + SHUTDOWN_MARGIN_S
    assert grace >= _soft_shutdown_s() + SHUTDOWN_MARGIN_S
    # A running attempt ends within its hard limit (lease - 5 s) whatever the shutdown does.
    assert grace >= float(_configmap()["ATTENTIVE_LEASE_S"]) + SHUTDOWN_MARGIN_S
    env = {e["name"]: e.get("value") for e in _container(worker).get("env", [])}
    assert env["REMAP_SIGTERM"] == "SIGQUIT"
    assert "replicas" not in worker["spec"], "KEDA owns the replica count; apply must not reset it"


def test_worker_reads_config_and_secret_and_is_probed_and_bounded() -> None:
    worker = _obj("Deployment", WORKER)
    pod = worker["spec"]["template"]["spec"]
    c = _container(worker)
    assert {"configMapRef": {"name": CONFIG}} in c["envFrom"]
    env = {e["name"]: e for e in c["env"]}
    for name in ("REDIS_URL", "ATTENTIVE_API_TOKEN", "SENTRY_DSN"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == SECRETS
    assert c["readinessProbe"]["exec"]["command"] == ["attentive-relay", "check"]
    # An outage of Redis or Attentive fails check; restarting workers would not help then.
    assert "livenessProbe" not in c
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= c["resources"][bound].keys()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["command"][:4] == ["celery", "-A", "worker", "worker"]
    assert _option(c["command"], "--pool", "-P") == "threads"
    assert int(_option(c["command"], "--concurrency", "-c")) == 24


def test_each_role_reads_only_its_own_secrets() -> None:
    """A worker never holds Flower's password or the write keys; Flower and the collector never
    hold the API token. So no container takes a whole Secret through envFrom."""
    for name, expected in ROLE_SECRETS.items():
        c = _container(_obj("Deployment", name))
        assert not [s for s in c.get("envFrom", []) if "secretRef" in s], (
            f"{name}: envFrom secretRef hands over every key"
        )
        assert _secret_keys_read(c) == expected, name
    worker = _secret_keys_read(_container(_obj("Deployment", WORKER)))
    assert not worker & {"FLOWER_BASIC_AUTH", "COLLECTOR_WRITE_KEYS"}
    # Every key of the Secret is read by some role (no forgotten secret lying around).
    assert set(_secret()) == set().union(*ROLE_SECRETS.values())


def test_redis_url_is_a_secret_not_config() -> None:
    """REDIS_URL carries Redis' password when there is one: never in the ConfigMap."""
    assert "REDIS_URL" not in _configmap()
    url = urlsplit(_redis_url())
    assert url.scheme == "redis"
    # The committed value is redis.yaml's password-less Redis, or a placeholder password.
    assert url.password is None or url.password.startswith(PLACEHOLDER)
    for name in ROLE_SECRETS:
        env = {e["name"]: e for e in _container(_obj("Deployment", name)).get("env", [])}
        assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": SECRETS, "key": "REDIS_URL"}, name


def test_every_env_name_is_a_setting_or_a_known_extra() -> None:
    names = set(_configmap()) | set(_secret())
    for _, obj in MANIFESTS:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            for c in obj["spec"]["template"]["spec"]["containers"]:
                names |= {e["name"] for e in c.get("env", [])}
    unknown = names - SETTINGS_ENV - NON_SETTINGS_ENV
    assert not unknown, f"not a Settings field nor a known extra: {sorted(unknown)}"
    assert "COLLECTOR_WRITE_KEYS" in SETTINGS_ENV


def test_env_references_resolve() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for _, o in MANIFESTS}
    for _, obj in MANIFESTS:
        if obj["kind"] != "Deployment":
            continue
        for c in obj["spec"]["template"]["spec"]["containers"]:
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in objects
                if "secretRef" in source:
                    assert ("Secret", source["secretRef"]["name"]) in objects
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    secret = objects["Secret", ref["secretKeyRef"]["name"]]
                    assert ref["secretKeyRef"]["key"] in secret["stringData"]
                if "configMapKeyRef" in ref:
                    cm = objects["ConfigMap", ref["configMapKeyRef"]["name"]]
                    assert ref["configMapKeyRef"]["key"] in cm["data"]


def test_configmap_values_load_into_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in _configmap().items():
        assert isinstance(value, str), name
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("REDIS_URL", _redis_url())
    settings = Settings()
    assert settings.attentive_queue == _redis_trigger()["listName"]
    assert settings.redis_url.get_secret_value() == _redis_url()


def test_secret_holds_placeholders_only() -> None:
    secret = _obj("Secret", SECRETS)
    assert "data" not in secret, "base64 data hides what is committed; use stringData placeholders"
    assert set(secret["stringData"]) == {
        "REDIS_URL",
        "ATTENTIVE_API_TOKEN",
        "ATTENTIVE_ACCOUNTS",
        "FLOWER_BASIC_AUTH",
        "COLLECTOR_WRITE_KEYS",
        "SENTRY_DSN",
    }
    for name, value in secret["stringData"].items():
        if name == "REDIS_URL":
            continue  # redis.yaml's password-less Redis; test_redis_url_is_a_secret_not_config
        assert value == "" or value.startswith(PLACEHOLDER), f"{name} does not look like a placeholder"
        # Once the markers are removed only lower-case words remain: no digits, no mixed case.
        assert re.fullmatch(r"[a-z:,_-]*", value.replace(PLACEHOLDER, "")), f"{name} looks like a real value"


def test_no_token_like_strings_anywhere_in_deploy() -> None:
    for path in [*K8S.glob("*.yaml"), COMPOSE]:
        for line in path.read_text(encoding="utf-8").splitlines():
            # An image digest is the one long hex string allowed.
            value = re.sub(r"@sha256:[0-9a-f]{64}\b", "", line.split("#", 1)[0])
            assert not re.search(r"(?<![A-Za-z0-9])[A-Za-z0-9+/]{32,}={0,2}", value), f"{path.name}: {line}"


def test_flower_is_cluster_internal_and_authenticated() -> None:
    svc = _obj("Service", FLOWER)
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    env = {e["name"]: e for e in _container(_obj("Deployment", FLOWER)).get("env", [])}
    assert env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"] == {"name": SECRETS, "key": "FLOWER_BASIC_AUTH"}
    assert _container(_obj("Deployment", FLOWER))["command"] == ["attentive-relay", "flower", "--port=5555"]
    for _, obj in MANIFESTS:
        assert obj["kind"] != "Ingress", "Flower's /metrics is unauthenticated: no Ingress in these manifests"


def test_collector_gets_its_write_keys() -> None:
    c = _container(_obj("Deployment", COLLECTOR))
    assert c["command"] == ["attentive-relay", "collect", "--host", "0.0.0.0", "--port", "8788"]
    env = {e["name"]: e for e in c.get("env", [])}
    assert env["COLLECTOR_WRITE_KEYS"]["valueFrom"]["secretKeyRef"]["key"] == "COLLECTOR_WRITE_KEYS"
    ports = {p["port"] for p in _obj("Service", COLLECTOR)["spec"]["ports"]}
    assert ports == {8788}


def test_redis_statefulset_is_persistent_and_never_evicts() -> None:
    redis_sets = [o for _, o in MANIFESTS if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "redis"]
    if not redis_sets:
        pytest.skip("no Redis StatefulSet in deploy/kubernetes (an external Redis is used)")
    (sts,) = redis_sets
    args = _container(sts)["args"]
    assert _option(args, "--appendonly") == "yes"
    assert _option(args, "--maxmemory-policy") == "noeviction"
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["volumeClaimTemplates"], "AOF without a volume is lost with the pod"


def test_one_image_and_one_non_root_user_for_every_role() -> None:
    relay = [o for _, o in MANIFESTS if o["kind"] == "Deployment"]
    assert {_container(o)["image"] for o in relay} == {"attentive-relay:0.1.0"}
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11\.\d+-slim", dockerfile, re.M)
    # The dependencies from the lock, hashes checked; then the project alone.
    assert re.search(r"^RUN pip install --require-hashes -r requirements/lock\.txt\s*$", dockerfile, re.M)
    assert re.search(r"^RUN pip install --no-deps \.", dockerfile, re.M)
    user = re.findall(r"^USER (\d+)(?::(\d+))?\s*$", dockerfile, re.M)
    assert len(user) == 1, "the image's USER must be numeric, or runAsNonRoot cannot verify it"
    uid, gid = int(user[0][0]), int(user[0][1] or user[0][0])
    assert uid != 0
    for o in relay:
        ctx = o["spec"]["template"]["spec"]["securityContext"]
        assert ctx["runAsNonRoot"] is True
        assert (ctx["runAsUser"], ctx["runAsGroup"]) == (uid, gid)


# --- Pinned images ----------------------------------------------------------------------------

# name:X.Y.Z (an exact release, optionally with a variant such as -slim-bookworm), optionally
# followed by the image's digest. `redis:7`, `redis:7.4`, `python:3.11-slim` or `latest` are not.
PINNED_IMAGE = re.compile(r"^[a-z0-9./_-]+:\d+\.\d+\.\d+(?:-[a-z0-9.-]+)?(?:@sha256:[0-9a-f]{64})?$")


def _images() -> dict[str, str]:
    """Every image deploy/ pulls, mapped to where: Dockerfile FROMs, manifests, Compose."""
    images = {}
    for n, line in enumerate((DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines(), 1):
        if m := re.match(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", line):
            images[m.group(1)] = f"Dockerfile:{n}"
    for f, obj in MANIFESTS:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            pod = obj["spec"]["template"]["spec"]
            for c in [*pod.get("initContainers", []), *pod["containers"]]:
                images[c["image"]] = f"{f}:{obj['metadata']['name']}"
    for name, svc in _compose()["services"].items():
        # A service that is built here (`build:`) tags its own image; the others are pulled.
        if "build" not in svc:
            images[svc["image"]] = f"docker-compose.yml:{name}"
    return images


def test_every_image_is_pinned_to_an_exact_version() -> None:
    images = _images()
    assert any(i.startswith("redis:") for i in images) and any(i.startswith("python:") for i in images)
    loose = {image: where for image, where in images.items() if not PINNED_IMAGE.match(image)}
    assert not loose, f"images not pinned to an exact version: {loose}"
    # Upstream images carry their digest too (the relay's own image is built here).
    for image, where in images.items():
        if not image.startswith("attentive-relay:"):
            assert "@sha256:" in image, f"{where}: {image} has no digest"


def test_compose_and_kubernetes_run_the_same_redis() -> None:
    redis_sets = [o for _, o in MANIFESTS if o["kind"] == "StatefulSet" and o["metadata"]["name"] == REDIS]
    if not redis_sets:
        pytest.skip("no Redis StatefulSet in deploy/kubernetes")
    assert _container(redis_sets[0])["image"] == _compose()["services"]["redis"]["image"]


# --- NetworkPolicy ------------------------------------------------------------------------------


def _redis_pod() -> dict[str, str]:
    return _pods()[REDIS]


def test_namespace_denies_ingress_by_default() -> None:
    deny = [
        p
        for p in _policies()
        if p["spec"]["podSelector"] == {} and "Ingress" in p["spec"]["policyTypes"] and not p["spec"].get("ingress")
    ]
    assert deny, "no default-deny ingress policy (podSelector {} with no ingress rule)"


def test_only_the_relay_and_keda_reach_redis() -> None:
    rules = _ingress_rules_for(_redis_pod())
    assert rules, "no NetworkPolicy admits anything to Redis"
    relay_roles = {name: labels for name, labels in _pods().items() if name != REDIS}
    assert {WORKER, FLOWER, COLLECTOR} <= relay_roles.keys()
    admitted: set[str] = set()
    keda = False
    for rule in rules:
        # Redis' port only, and each rule names its peers: an empty `from` admits everyone.
        assert [(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]] == [("TCP", REDIS_PORT)]
        assert rule.get("from"), "an ingress rule without `from` admits every source"
        for peer in rule["from"]:
            assert "ipBlock" not in peer, "Redis is reached by pods, never by an address range"
            if "namespaceSelector" in peer:
                # KEDA's operator, in its own namespace, and only it.
                assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}
                assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "keda-operator"}}
                keda = True
                continue
            # A podSelector alone: pods of this namespace. It picks the relay's roles and nothing
            # else: not Redis itself, not an unlabelled pod, not another app's pod.
            selector = peer["podSelector"]
            assert selector, "an empty podSelector admits every pod of the namespace"
            picked = {name for name, labels in _pods().items() if _selects(selector, labels)}
            assert REDIS not in picked
            admitted |= picked
            assert not _selects(selector, {})
            assert not _selects(selector, {"app.kubernetes.io/name": "something-else"})
            assert not _selects(selector, {"app.kubernetes.io/part-of": "attentive-relay"})
    assert admitted == relay_roles.keys(), f"relay roles admitted to Redis: {sorted(admitted)}"
    assert keda, "KEDA's operator reads the queue length: it must reach Redis"
    assert int(_redis_trigger()["address"].rsplit(":", 1)[1]) == REDIS_PORT


def test_collector_and_flower_are_reachable_inside_the_cluster_only() -> None:
    for name, port in ((COLLECTOR, 8788), (FLOWER, 5555)):
        rules = _ingress_rules_for(_pods()[name])
        ports = {p["port"] for rule in rules for p in rule.get("ports", [])}
        assert ports == {port}, f"{name}: ports admitted {ports}"
        for rule in rules:
            assert rule.get("from"), f"{name}: a rule without `from` also admits outside addresses"
            for peer in rule["from"]:
                assert "ipBlock" not in peer, f"{name}: cluster-internal, no address ranges"


def test_every_listening_port_is_admitted_and_nothing_else() -> None:
    """Under default deny, each container port is reachable only where a policy opens it."""
    for _, obj in MANIFESTS:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        labels = obj["spec"]["template"]["metadata"]["labels"]
        declared = {
            p["containerPort"] for c in obj["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])
        }
        admitted = {p["port"] for rule in _ingress_rules_for(labels) for p in rule.get("ports", [])}
        assert all(isinstance(p, int) for p in admitted), "name ports by number in policies"
        assert admitted == declared, f"{obj['metadata']['name']}: ports {declared}, policies admit {admitted}"


# --- The commands the files run -----------------------------------------------------------------


def _relay_commands() -> dict[str, str]:
    """`attentive-relay <sub>` used anywhere in deploy/, mapped to where."""
    used: dict[str, str] = {}

    def add(argv: list[str], where: str) -> None:
        if argv and argv[0] == "attentive-relay" and len(argv) > 1:
            used.setdefault(argv[1], where)

    for f, obj in MANIFESTS:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            for c in obj["spec"]["template"]["spec"]["containers"]:
                add(c.get("command", []), f)
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    add(c.get(probe, {}).get("exec", {}).get("command", []), f)
    for name, svc in _compose()["services"].items():
        command = svc.get("command", [])
        add(shlex.split(command) if isinstance(command, str) else command, f"docker-compose.yml:{name}")
    return used


def test_relay_subcommands_exist() -> None:
    group = typer.main.get_command(cli)
    assert isinstance(group, typer.core.TyperGroup)
    known = set(group.commands)
    used = _relay_commands()
    assert {"collect", "sandbox", "check"} <= used.keys()
    missing = {sub: where for sub, where in used.items() if sub not in known}
    assert not missing, f"unknown attentive-relay subcommands: {missing}"


# --- docker-compose.yml -------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    (doc,) = _load_all(COMPOSE)
    return doc


def test_compose_spec_is_the_vendored_upstream_file() -> None:
    assert hashlib.sha256(COMPOSE_SPEC.read_bytes()).hexdigest() == COMPOSE_SPEC_SHA256
    readme = (DEPLOY / "schema" / "README.md").read_text(encoding="utf-8")
    assert "1.29.2" in readme and "Apache-2.0" in readme


def test_compose_file_validates_against_the_compose_spec() -> None:
    import json

    schema = json.loads(COMPOSE_SPEC.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(_compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    # The schema allows anything under x-*; make sure the services themselves were checked.
    assert {"redis", "worker", "flower", "collector", "sandbox"} <= _compose()["services"].keys()


def test_compose_redis_persists_and_never_evicts() -> None:
    redis = _compose()["services"]["redis"]
    assert redis["image"].startswith("redis:7.")
    command = redis["command"]
    argv = shlex.split(command) if isinstance(command, str) else command
    assert _option(argv, "--appendonly") == "yes"
    assert _option(argv, "--maxmemory-policy") == "noeviction"
    assert any(v.split(":", 1)[1] == "/data" for v in redis["volumes"])


def test_compose_worker_shuts_down_softly_and_uses_the_sandbox_by_default() -> None:
    services = _compose()["services"]
    worker = services["worker"]
    assert _seconds(worker["stop_grace_period"]) >= SOFT_SHUTDOWN_S + SHUTDOWN_MARGIN_S
    assert _seconds(worker["stop_grace_period"]) >= _soft_shutdown_s() + SHUTDOWN_MARGIN_S
    env = worker["environment"]
    assert env["REMAP_SIGTERM"] == "SIGQUIT"
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert "${ATTENTIVE_API_TOKEN" in env["ATTENTIVE_API_TOKEN"]
    # ${ATTENTIVE_BASE_URL:-http://sandbox:8787}: the sandbox unless the host says otherwise.
    default = re.fullmatch(r"\$\{ATTENTIVE_BASE_URL:-(.+)\}", env["ATTENTIVE_BASE_URL"])
    assert default and urlsplit(default.group(1)).hostname == "sandbox"
    assert _option(services["sandbox"]["command"], "--port") == str(urlsplit(default.group(1)).port)
    # The same worker command as in Kubernetes.
    assert worker["command"] == _container(_obj("Deployment", WORKER))["command"]


def test_compose_flower_and_collector() -> None:
    services = _compose()["services"]
    assert services["flower"]["command"] == ["attentive-relay", "flower", "--port=5555"]
    assert "${FLOWER_BASIC_AUTH" in services["flower"]["environment"]["FLOWER_BASIC_AUTH"]
    assert any(p.endswith(":5555") for p in services["flower"]["ports"])
    assert services["collector"]["command"] == ["attentive-relay", "collect", "--host", "0.0.0.0", "--port", "8788"]
    assert "${COLLECTOR_WRITE_KEYS" in services["collector"]["environment"]["COLLECTOR_WRITE_KEYS"]
    # KEY:ACCOUNT write keys need the account names, or the collector refuses to start.
    assert "${ATTENTIVE_ACCOUNTS" in services["collector"]["environment"]["ATTENTIVE_ACCOUNTS"]


def test_compose_env_names_are_settings_or_known_extras() -> None:
    names: set[str] = set()
    for svc in _compose()["services"].values():
        env = svc.get("environment", {})
        names |= set(env) if isinstance(env, dict) else {e.split("=", 1)[0] for e in env}
    unknown = names - SETTINGS_ENV - NON_SETTINGS_ENV
    assert not unknown, sorted(unknown)


# --- Lock files ---------------------------------------------------------------------------------


def _lock(path: Path) -> dict[str, tuple[str, int]]:
    """A lock file's pins: canonical name -> (version, number of hashes)."""
    pins: dict[str, tuple[str, int]] = {}
    # Requirement lines are continued with backslashes; comments (# via ...) stand alone.
    text = re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8"))
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("-"), f"{path.name}: unexpected option line {line!r}"
        hashes = re.findall(r"--hash=sha256:[0-9a-f]{64}", line)
        req = Requirement(re.sub(r"\s*--hash=\S+", "", line))
        assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", f"{path.name}: {line}"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{path.name}: {name} pinned twice"
        pins[name] = (next(iter(req.specifier)).version, len(hashes))
    return pins


RUNTIME_EXTRAS = ("worker", "collector", "flower")
"""The extras requirements/lock.txt pins beside the base: every role of the one image."""


def _pyproject_requirements() -> tuple[list[Requirement], list[Requirement]]:
    """(runtime, test) requirements; an extra naming the project's own extras is expanded, not pinned."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    extras = project.get("optional-dependencies", {})

    def of(*names: str) -> list[Requirement]:
        reqs = [Requirement(r) for name in names for r in extras.get(name, [])]
        return [r for r in reqs if canonicalize_name(r.name) != canonicalize_name(project["name"])]

    runtime = [Requirement(r) for r in project["dependencies"]] + of(*RUNTIME_EXTRAS)
    # scripts/install installs the test lock for `test` and for `embedded` (a subset of it).
    return runtime, of("test", "embedded")


def test_base_install_is_what_producers_imports() -> None:
    """A web app's install: the base dependencies are producers/' imports, no role's packages.
    The extras named by lock.txt's rule and by the test extra exist, so none is silently empty."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    base = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    assert base == {"redis", "pydantic", "pydantic-settings", "phonenumbers"}
    extras = project["optional-dependencies"]
    assert all(extras.get(name) for name in RUNTIME_EXTRAS)
    [own] = [Requirement(r) for r in extras["test"] if Requirement(r).name == project["name"]]
    assert set(RUNTIME_EXTRAS) <= own.extras
    lock_script = (ROOT / "scripts" / "lock").read_text(encoding="utf-8")
    assert all(f"--extra {name}" in lock_script for name in RUNTIME_EXTRAS)


@pytest.mark.parametrize("path", [LOCK, TEST_LOCK], ids=lambda p: p.name)
def test_lock_pins_every_package_with_hashes(path: Path) -> None:
    pins = _lock(path)
    assert pins, f"{path} is empty"
    unhashed = sorted(name for name, (_, hashes) in pins.items() if hashes == 0)
    assert not unhashed, f"{path.name}: no hashes for {unhashed}; pip --require-hashes would refuse them"
    # Made by scripts/lock (uv pip compile), so it can be remade after a dependency change.
    assert "scripts/lock" in path.read_text(encoding="utf-8").split("\n", 3)[1]


def test_locks_agree_with_pyproject() -> None:
    """Every dependency of pyproject.toml is pinned in the lock scripts/install and the Dockerfile
    install from, at a version pyproject allows. Fails after a dependency change until someone
    runs scripts/lock and commits requirements/."""
    runtime, test = _pyproject_requirements()
    lock, test_lock = _lock(LOCK), _lock(TEST_LOCK)
    problems = []
    for reqs, pins, path in ((runtime, lock, LOCK), (runtime + test, test_lock, TEST_LOCK)):
        for req in reqs:
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            pin = pins.get(canonicalize_name(req.name))
            if pin is None:
                problems.append(f"{req.name} is not in {path.name}")
            elif not req.specifier.contains(pin[0], prereleases=True):
                problems.append(f"{path.name} pins {req.name}=={pin[0]}, pyproject wants {req}")
    assert not problems, "run scripts/lock: " + "; ".join(problems)
    # The test lock is the runtime lock plus the test tools, never other runtime versions.
    changed = {n: (v, test_lock[n][0]) for n, (v, _) in lock.items() if test_lock.get(n, (v,))[0] != v}
    assert not changed and lock.keys() <= test_lock.keys(), f"lock.txt and test-lock.txt disagree: {changed}"


def test_install_and_image_use_the_locks() -> None:
    install = (ROOT / "scripts" / "install").read_text(encoding="utf-8")
    assert "--require-hashes" in install and "requirements/test-lock.txt" in install
    assert "requirements/lock.txt" in install
    assert re.search(r"--no-deps -e \.", install)
    # The install stamp covers the lock, so a changed lock reinstalls.
    assert re.search(r'cat pyproject\.toml "\$lock" \| cksum', install)
    assert "scripts/install test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "COPY requirements/lock.txt" in (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
