"""``python -m cluster``: the same command line as the ``cluster`` script."""

from cluster.cli import main

main()
