"""``python -m worker.cli``: the ``attentive-relay`` command line."""

from worker.cli import main

main()
