"""The collector's process supervisor: one listening socket, N forked server processes.

    python -m worker.collector.supervisor HOST PORT WORKERS     (what ``collect`` execs)

Why not uvicorn's own ``--workers``: its supervisor imports uvicorn and spawns workers
through multiprocessing, which adds a resource-tracker process; together that is about 37 MB
of the 150 MB a collector pod may use with 5,000 idle connections open. This supervisor
imports only the standard library (about 11 MB); each worker it forks imports uvicorn and the
app itself, so nothing is held twice.

Behaviour:
- binds HOST:PORT once; every worker accepts from that socket;
- a worker that exits while the collector is running is started again after a second; more
  than `MAX_RESTARTS` within `RESTART_WINDOW_S` stops the collector (exit 1), so a broken
  deployment fails visibly instead of looping;
- SIGTERM or SIGINT is passed to every worker (uvicorn then finishes the requests in hand);
  workers still running after `GRACE_S` are killed; the supervisor exits 0.
With WORKERS = 1 the one server runs in this process, without a supervisor.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import sys
import time

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
GRACE_S = 30.0


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (each connection is a file
    descriptor; 1024, a common default, is far too few). Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65_536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            _log(f"could not raise the open files limit from {soft}")
    return soft


def _log(message: str) -> None:
    print(f"collector supervisor [{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def _start(sock: socket.socket) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)  # uvicorn installs its own
        from worker.collector.server import run_worker

        run_worker(sock)
        code = 0
    except BaseException as exc:  # a worker must never return into the supervisor's loop
        _log(f"worker failed: {type(exc).__name__}")
    finally:
        os._exit(code)


def supervise(host: str, port: int, workers: int) -> int:
    """Serve until SIGTERM/SIGINT; the exit status (0 on a signal, 1 on repeated worker deaths)."""
    raise_open_files_limit()
    sock = socket.create_server((host, port), backlog=2048)
    sock.set_inheritable(True)
    if workers <= 1:
        from worker.collector.server import run_worker

        run_worker(sock)
        return 0
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    children = {_start(sock) for _ in range(workers)}
    restarts: list[float] = []
    status = 0
    while not stopping:
        time.sleep(0.5)
        while children:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            if stopping:
                break
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW_S] + [now]
            if len(restarts) > MAX_RESTARTS:
                _log(f"workers died {len(restarts)} times in {RESTART_WINDOW_S:.0f} s; stopping")
                stopping.append(signal.SIGTERM)
                status = 1
                break
            _log(f"worker {pid} exited; starting another")
            time.sleep(1.0)
            children.add(_start(sock))
    for pid in children:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while children and time.monotonic() < deadline:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if pid:
            children.discard(pid)
        else:
            time.sleep(0.1)
    for pid in children:
        _signal(pid, signal.SIGKILL)
    sock.close()
    return status


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.kill(pid, sig)


if __name__ == "__main__":
    host_, port_, workers_ = sys.argv[1:4]
    sys.exit(supervise(host_, int(port_), int(workers_)))
