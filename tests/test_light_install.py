"""What a web app gets from ``pip install attentive-relay``: the producer and nothing of the worker.

The project is built into a wheel and installed with its base dependencies alone into a fresh
virtualenv (versions pinned to the test lock's, so the run is repeatable); there it queues a
job to the test Redis, sync and async, while Celery, httpx, uvicorn and the other packages of
the extras cannot even be found. Its console script says which extra to install instead of
failing with a traceback. And, in this environment where they are all installed, importing every
module of ``producers`` still loads none of them.
"""

from __future__ import annotations

import json
import pkgutil
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import producers
from producers.store import keys

from conftest import queued_count

ROOT = Path(__file__).resolve().parent.parent
TEST_LOCK = ROOT / "requirements" / "test-lock.txt"
EXTRAS_ONLY = ("celery", "kombu", "httpx", "uvicorn", "sentry_sdk", "flower", "typer", "rich", "prometheus_client")
"""Top-level modules that only the extras install: a web app's producer loads none of them."""
NEVER_IMPORTED = ("worker", *EXTRAS_ONLY)
EVENT = {"kind": "custom_event", "type": "Order Shipped", "user": {"email": "jane@example.com"}}

# Runs inside the fresh virtualenv: queue one job sync and one async, report what can be imported.
IN_VENV = """
import asyncio, importlib.util, json, sys
import producers
job = json.loads(sys.argv[1])
sync_id = producers.enqueue(job)
async def main():
    job_id = await producers.aenqueue(job)
    await producers.aclose()
    return job_id
async_id = asyncio.run(main())
print(json.dumps({
    "ids": [sync_id, async_id],
    "version": producers.__version__,
    "loaded": sorted(m for m in %r if m in sys.modules),
    "findable": sorted(m for m in %r if importlib.util.find_spec(m) is not None),
}))
"""


def _constraints(path: Path) -> str:
    """The test lock's pins without their hashes (pip refuses hashes in a constraints file)."""
    text = re.sub(r"\\\n\s*", " ", TEST_LOCK.read_text(encoding="utf-8"))
    lines = [re.sub(r"\s*--hash=\S+", "", line.split(" #", 1)[0]).strip() for line in text.splitlines()]
    path.write_text("\n".join(line for line in lines if line and not line.startswith("#")) + "\n", encoding="utf-8")
    return str(path)


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding the project's wheel and its base dependencies, nothing else."""
    tmp = tmp_path_factory.mktemp("light")
    # Built from a copy of what the wheel holds, so the build leaves nothing in the work tree.
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("producers", "worker"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    # setuptools comes from the test lock, so no build environment is fetched.
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)], check=True)
    [wheel] = wheels.glob("attentive_relay-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # This environment's pip installs into the new one (--python): no pip of its own to set up.
    # --no-compile: byte-compiling every installed package was two thirds of the install (14 of
    # 21 s); the first run below writes the .pyc files of what it imports, so the import time
    # measured after it is still that of a compiled install.
    install = [*pip, "--python", str(venv / "bin" / "python"), "install", "--no-compile"]
    install += ["-c", _constraints(tmp / "constraints.txt")]
    subprocess.run([*install, str(wheel)], check=True, timeout=240)
    return venv


def test_the_base_install_queues_jobs_without_any_extra_package(base_venv, redis_server, redis_client):
    python = str(base_venv / "bin" / "python")
    code = IN_VENV % (NEVER_IMPORTED, EXTRAS_ONLY)
    env = {"REDIS_URL": redis_server.url, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([python, "-c", code, json.dumps(EVENT)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["loaded"] == [] and report["findable"] == [], "the base install brought an extra's package"
    assert report["version"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert all(redis_client.hget(keys.job(i), "state") == b"queued" for i in report["ids"])
    assert queued_count(redis_client) == 2

    importtime = subprocess.run(
        [python, "-X", "importtime", "-c", "import producers"], capture_output=True, text=True, env=env, check=True
    )
    [cumulative_us] = [
        int(line.split("|")[1]) for line in importtime.stderr.splitlines() if line.endswith("| producers")
    ]
    size_mb = _size_mb(base_venv)
    print(f"\nbase virtualenv: {size_mb:.1f} MB (no .pyc files); import producers: {cumulative_us / 1000:.1f} ms")


def test_the_console_script_names_the_extra_to_install(base_venv):
    done = subprocess.run(
        [str(base_venv / "bin" / "attentive-relay"), "stats"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "attentive-relay: this command needs the 'worker' extra (typer is not installed): "
        "pip install 'attentive-relay[worker]'"
    ]


def test_producers_imports_nothing_of_the_worker_even_where_it_is_installed():
    modules = [m.name for m in pkgutil.walk_packages(producers.__path__, "producers.")]
    assert {
        "producers.async_producer",
        "producers.on_commit",
        "producers.store.enqueue",
        "producers.store.message",
    } <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in {NEVER_IMPORTED!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_one_version_string_from_the_package_metadata():
    from typer.testing import CliRunner

    from worker.cli import cli
    from worker.destinations.base import USER_AGENT

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert producers.__version__ == version
    assert USER_AGENT.startswith(f"attentive-relay/{version} ")
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"attentive-relay {version}"
    # No other copy of it in the code: everything reads the metadata.
    for path in [*ROOT.glob("producers/**/*.py"), *ROOT.glob("worker/**/*.py")]:
        assert f'"{version}"' not in path.read_text(encoding="utf-8"), path
