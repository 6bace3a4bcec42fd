"""A worker process started before its shards are known: imports first, then waits for its spec.

``cluster up`` starts these (:mod:`cluster.warm_start`) as it begins, so a
worker's interpreter start and imports (aiohttp, ZeroMQ, uvloop, the worker
package: about 0.3 s) run beside the supervisor's own imports and
``GET /gateway/bot`` instead of after them. :func:`run_when_told` is a
multiprocessing *spawn* target like :func:`worker.main.run_worker`: a fresh
interpreter, nothing inherited. It imports the worker, then reads one
:class:`worker.spec.WorkerSpec` from its pipe (multiprocessing's framing, a
pickle) and runs it; a pipe closed before a spec came means it was not
needed, and it exits 0 without a word.
"""

from __future__ import annotations

import signal
from multiprocessing.connection import Connection


def run_when_told(spec_pipe: Connection) -> None:
    """Spawn target: import the worker, wait for a spec on ``spec_pipe``, run it."""
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
