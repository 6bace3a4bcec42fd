"""Where worker processes start from: multiprocessing's forkserver, worker.main imported once.

A worker started with the *spawn* method is a new interpreter that imports aiohttp,
ZeroMQ, uvloop and the worker package before it can open a connection: about
0.6 s on the 2-core bench machine, paid by every worker at startup and again
by every replacement of a crashed one. The forkserver is a small process,
started from this clean module state (no event loop, no ZeroMQ context, no
thread of the supervisor's), that imports :data:`PRELOAD` once; each worker is
then a fork of it: the imports are done, and uvloop and the ZeroMQ context are
still created in the child (STYLE.md 9: never fork a running loop).

:func:`start_early` starts it as ``cluster up`` begins, so its imports run
beside the supervisor's own start-up instead of after it. Platforms without
forkserver (Windows, macOS's default aside) use spawn.
"""

from __future__ import annotations

import multiprocessing
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # ForkServerContext does not exist on Windows
    from multiprocessing.context import ForkServerContext, SpawnContext

#: What the forkserver imports before its first fork.
PRELOAD: Final = ("worker.main",)


def worker_context() -> ForkServerContext | SpawnContext:
    """The multiprocessing context workers start with (forkserver where available)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    return context


def start_early() -> None:
    """Start the forkserver now (it would start at the first worker's start otherwise)."""
    if worker_context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()
