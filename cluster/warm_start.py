"""How worker processes start, and starting them before the plan exists (``cluster up``'s first step).

A worker is a fresh process that runs :func:`worker.entry.run_spec` (STYLE.md 9:
never a fork of a running loop). Before it can open a connection it needs
aiohttp, ZeroMQ, uvloop and the worker package imported (about 0.3 s), while
the supervisor imports its own modules and asks ``GET /gateway/bot`` before it
knows how many workers to start. Run one after the other, the two are most of
the time before the first IDENTIFY, and every replacement of a crashed worker
pays the imports again. So:

- **forkserver** (:func:`worker_context`, where the platform has it): workers
  are forks of multiprocessing's forkserver, a small process that imported
  :data:`PRELOAD` once (:mod:`worker.forkserver`) and has no loop, thread or
  ZeroMQ context of the supervisor's. :class:`WarmStarts` starts it as ``cluster up`` begins, so its
  imports run beside the supervisor's; a worker (a first one or a replacement)
  is then a fork of a few milliseconds, and the workers share its pages.
- **spawn** elsewhere: :class:`WarmStarts` starts :func:`warm_count` processes
  at once (:func:`worker.entry.run_when_told`), each importing the worker and
  waiting on a pipe; :meth:`cluster.workers.WorkerPool.spawn` :meth:`~WarmStarts.take`s
  one and hands it its :class:`worker.spec.WorkerSpec` instead of starting a process.
  Those the plan does not need are closed (:meth:`WarmStarts.close`: the pipe
  closes, the process exits 0) once the range's workers are running, and at the
  latest :data:`WARM_TTL_S` after the start, so a spare does not keep them.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import struct
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Final

from cluster.planner import default_worker_count
from worker.entry import run_when_told

if TYPE_CHECKING:  # ForkServerContext does not exist on Windows
    from multiprocessing.context import ForkServerContext, SpawnContext

    from cluster.config import SupervisorConfig
    from worker.spec import WorkerSpec

    WorkerContext = ForkServerContext | SpawnContext

#: Unused warm workers are closed this long after the start at the latest.
WARM_TTL_S: Final = 30.0
#: What the forkserver imports before its first fork (the worker; SIGTERM ignored).
PRELOAD: Final = ("worker.forkserver",)


def worker_context() -> WorkerContext:
    """The multiprocessing context workers start with: forkserver where available, else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    return context


def warm_count(config: SupervisorConfig, cpu_count: int) -> int:
    """How many workers the range will most likely run, from the configuration alone.

    ``--workers`` when given; else the default count for the range's size when the
    configuration knows it (a static ``--shard-ids``, or ``--shards N`` / the
    simulator's shard count, split by ``--hosts``); else one.
    """
    if config.workers is not None:
        return config.workers
    if config.shard_range is not None:
        first, last = config.shard_range
        return default_worker_count(last - first + 1, cpu_count)
    total = config.shards
    if total is None and config.simulate is not None:
        total = config.simulate.shards
    if total is None:
        return 1
    hosts = config.redis.hosts if config.redis is not None else None
    return default_worker_count(-(-total // (hosts or 1)), cpu_count)


def start_forkserver() -> bool:
    """Start the forkserver now, if workers fork from one (False: they are spawned).

    ``cluster up`` calls it before it even parses its options, so the server's imports
    run beside all of the supervisor's start; it returns at once.
    """
    if worker_context().get_start_method() != "forkserver":
        return False
    _ensure_forkserver()
    return True


def _ensure_forkserver() -> None:
    from multiprocessing import forkserver

    forkserver.ensure_running()  # returns at once: its imports run beside ours


class WarmProcess:
    """One started worker waiting for its spec; :meth:`hand` gives it one, once."""

    def __init__(self, process: BaseProcess, pipe: Connection) -> None:
        self.process = process
        self._pipe = pipe
        self._rest = memoryview(b"")

    def hand(self, spec: WorkerSpec, loop: asyncio.AbstractEventLoop) -> BaseProcess:
        """Send ``spec`` (without blocking the loop: the child may still be importing)."""
        body = bytes(ForkingPickler.dumps(spec))
        # multiprocessing.connection's framing: a signed 4-byte big-endian length, the pickle
        self._rest = memoryview(struct.pack("!i", len(body)) + body)
        fd = self._pipe.fileno()
        os.set_blocking(fd, False)
        if self._write():
            loop.add_writer(fd, self._writable, loop, fd)
        return self.process

    def _write(self) -> bool:
        """Write what the pipe takes; True while some is left."""
        try:
            while self._rest:
                self._rest = self._rest[os.write(self._pipe.fileno(), self._rest) :]
        except BlockingIOError:
            return True
        except OSError:  # the child died: its sentinel tells the pool
            self._rest = memoryview(b"")
        self._pipe.close()
        return False

    def _writable(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        if not self._write():
            loop.remove_writer(fd)

    def close(self) -> None:
        """Not needed: the child reads the end of its pipe and exits 0."""
        if not self._pipe.closed:
            self._pipe.close()


class WarmStarts:
    """Workers started early (spawn), taken one by one by the pool; the rest closed.

    With a forkserver ``context`` it starts the forkserver and no process: a fork
    of it is ready as fast as a warm process would be, and :meth:`take` answers None.
    """

    def __init__(self, count: int, context: WorkerContext | None = None) -> None:
        self._waiting: list[WarmProcess] = []
        context = worker_context() if context is None else context
        if context.get_start_method() == "forkserver":
            _ensure_forkserver()
            return
        for _ in range(count):
            reader, writer = context.Pipe(duplex=False)
            process = context.Process(
                target=run_when_told, args=(reader,), name="titanium-worker", daemon=True
            )
            process.start()
            reader.close()
            self._waiting.append(WarmProcess(process, writer))

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def processes(self) -> list[BaseProcess]:
        """The processes waiting, in the order :meth:`take` hands them out."""
        return [warm.process for warm in self._waiting]

    def take(self) -> WarmProcess | None:
        """A started process still alive, or None (start one the usual way)."""
        while self._waiting:
            warm = self._waiting.pop(0)
            if warm.process.is_alive():
                return warm
            warm.close()
            warm.process.join(0)
        return None

    def close(self) -> None:
        """Close the ones not taken; each exits at once (reaped by the running loop)."""
        waiting, self._waiting = self._waiting, []
        for warm in waiting:
            warm.close()
            _reap_later(warm.process)


def _reap_later(process: BaseProcess) -> None:
    """Join ``process`` when its sentinel says it exited, without blocking the loop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop: it exits at once, the join waits for it
        process.join(1.0)
        return
    sentinel = process.sentinel

    def reap() -> None:
        loop.remove_reader(sentinel)
        # the sentinel closes a moment before the exit can be reaped: a short wait, not 0
        with contextlib.suppress(ValueError):
            process.join(1.0)

    loop.add_reader(sentinel, reap)
