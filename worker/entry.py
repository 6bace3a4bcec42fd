"""The worker process's entry point as the supervisor names it: light to import.

The supervisor hands multiprocessing a target by reference, so it imports the
target's module; :func:`run_spec` imports :mod:`worker.main` (picows, ZeroMQ,
uvloop, the shard engine: about 0.1 s more on top of what the supervisor
loads) only in the child, never in the supervisor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.spec import WorkerSpec


def run_spec(spec: WorkerSpec) -> None:
    """Process target: :func:`worker.main.run_worker` (it exits with the worker's code)."""
    from worker.main import run_worker

    run_worker(spec)
