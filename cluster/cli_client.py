"""Client-side commands of the ``cluster`` CLI: ``status`` and ``tail``.

They talk to a running cluster (its HTTP endpoint, its PUB socket) and never
start one. They register on :data:`cluster.cli.app` when this module is imported.
"""

from __future__ import annotations
