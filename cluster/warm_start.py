"""How worker processes start, and starting that early (``cluster up``'s first step).

A worker is a fresh process that runs :func:`worker.entry.run_spec` (STYLE.md 9:
never a fork of a running loop). Before it can open a connection it needs
picows, ZeroMQ, uvloop and the worker package imported (about 0.14 s), while
the supervisor imports its own modules and asks ``GET /gateway/bot`` before it
knows how many workers to start; every replacement of a crashed worker would
pay the imports again. So where the platform has one (Linux, macOS),
:func:`worker_context` has workers fork from multiprocessing's forkserver: a
small process that imported :data:`PRELOAD` once (:mod:`worker.forkserver`) and
has no loop, thread or ZeroMQ context of the supervisor's. ``cluster up``
calls :func:`start_forkserver` before it even parses its options, so the
server's imports run beside all of the supervisor's start; a worker (a first
one or a replacement) is then a fork of a few milliseconds, and the workers
share the server's pages. Elsewhere workers are spawned.
"""

from __future__ import annotations

import multiprocessing
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # ForkServerContext does not exist on Windows
    from multiprocessing.context import ForkServerContext, SpawnContext

#: What the forkserver imports before its first fork (the worker; SIGTERM ignored).
PRELOAD: Final = ("worker.forkserver",)


def worker_context() -> ForkServerContext | SpawnContext:
    """The multiprocessing context workers start with: forkserver where available, else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    return context


def start_forkserver() -> bool:
    """Start the forkserver now, if workers fork from one (False: they are spawned).

    It returns at once: the server's imports run beside the caller's. Without this
    call the server starts at the first worker's start, imports and all.
    """
    if worker_context().get_start_method() != "forkserver":
        return False
    from multiprocessing import forkserver

    forkserver.ensure_running()
    return True
