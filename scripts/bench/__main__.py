"""``python -m scripts.bench``: see :mod:`scripts.bench.run`."""

from scripts.bench.run import main

main()
