"""What the forkserver the workers fork from imports first (cluster/warm_start.py ``PRELOAD``).

Imported there and nowhere else: it imports the worker, so each fork starts with
it loaded, and makes the server ignore SIGTERM. A SIGTERM sent to the whole
process group (``kill -TERM -PGID``, ``timeout``, a process manager stopping a
group) would otherwise end the server while its workers drain, and the
supervisor, which learns a fork's exit through the server, would read every
worker as exited (status 255) and start replacements in the middle of its
stop. The server ends by itself once the supervisor and every worker are
gone (multiprocessing's alive pipe). Each worker sets its own SIGTERM handler
(:func:`worker.main.serve`); until then the inherited SIG_IGN keeps a fork
from dying half started.

Last, every object imported so far is frozen out of the garbage collector
(``gc.freeze``): a fork shares the server's pages until it writes to them,
and each collection in a worker would otherwise write to the head of every
imported object it traverses, copying those pages into the worker.
"""

from __future__ import annotations

import gc
import signal

import worker.main  # noqa: F401  (the point: every fork starts with it imported)

signal.signal(signal.SIGTERM, signal.SIG_IGN)
gc.freeze()  # after every import: forks keep sharing these objects' pages
