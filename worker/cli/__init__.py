"""``attentive-relay``: enqueue jobs, read counters, work the dead-letter queue, run the sandbox
and the demo. Output with ``--json`` is part of the contract: keys stay stable.

Exit status: 0 on success, 1 when some input was invalid or an entry was not found, 2 on usage
errors (typer's) and input files that cannot be read, 3 when Redis cannot be reached.
"""

from __future__ import annotations

# isort: off
# imported in this order: --help lists the commands in the order they were created
from worker.cli import enqueue, collect, queues, deadletters, attentive, erase, services  # noqa: F401

# isort: on
from worker.cli.context import cli

__all__ = ["cli", "main"]


def main() -> None:
    cli()
