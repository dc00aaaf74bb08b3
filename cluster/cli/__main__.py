"""``python -m cluster.cli`` is the ``rayline`` command."""

from cluster.cli.main import main

main()
