"""The worker process's entry points as the supervisor names them: light to import.

The supervisor hands multiprocessing a target by reference, so it imports the
target's module; these two import :mod:`worker.main` (aiohttp, ZeroMQ, uvloop,
the shard engine: about 0.1 s more on top of what the supervisor loads) only in
the child, never in the supervisor.

- :func:`run_spec`: run the spec given at the start (a respawn, or no early start).
- :func:`run_when_told`: started before the plan exists (``cluster up``'s first step,
  :mod:`cluster.warm_start`): import the worker, then read one
  :class:`worker.spec.WorkerSpec` from the pipe (multiprocessing's framing, a
  pickle) and run it; a pipe closed before a spec came means it was not needed,
  and it exits 0 without a word.
"""

from __future__ import annotations

import signal
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.spec import WorkerSpec


def run_spec(spec: WorkerSpec) -> None:
    """Process target: :func:`worker.main.run_worker` (it exits with the worker's code)."""
    from worker.main import run_worker

    run_worker(spec)


def run_when_told(spec_pipe: Connection) -> None:
    """Process target: import the worker, wait for a spec on ``spec_pipe``, run it."""
    # As run_worker: a Ctrl-C reaches the whole process group; the supervisor decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from worker.main import run_worker  # the point of starting early

    try:
        spec = spec_pipe.recv()
    except (EOFError, OSError):  # not needed: the supervisor closed the pipe (or is gone)
        return
    finally:
        spec_pipe.close()
    run_worker(spec)
