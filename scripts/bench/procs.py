"""Child processes of the benchmark: start, read their line protocol, measure, stop.

Every load source, receiver and sink runs in a process of its own, so the
CPU a receiver costs is read from its own process tree (psutil, children
included) and nothing else. Children talk back with short stdout lines
(``PORT n``, ``BOUND endpoint``, ``DONE ...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

REPO: Path = Path(__file__).resolve().parents[2]
#: Where children import the packages from (``--head``: a snapshot of the committed
#: tree), ahead of REPO (which still provides ``scripts.bench``); None: the working tree.
CODE_DIR: Path | None = None


class ChildError(Exception):
    """A child process died or did not say what was expected in time."""


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its children, living or reaped."""
    try:
        proc = psutil.Process(pid)
        times = proc.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                ct = child.cpu_times()
                total += ct.user + ct.system
    except psutil.Error:
        return 0.0
    return float(total)


def _tree_sum(pid: int, size: Callable[[psutil.Process], int]) -> int:
    proc = psutil.Process(pid)
    total = size(proc)
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += size(child)
    return total


def tree_rss(pid: int) -> int:
    """Resident set size in bytes of a process and all its living children."""
    return _tree_sum(pid, lambda proc: int(proc.memory_info().rss))


def tree_pss(pid: int) -> int:
    """Proportional set size in bytes of a process and all its living children: each
    page shared by several processes (shared libraries, pages a fork shares with its
    parent) counted once in all, split among them, where :func:`tree_rss` counts it
    once per process."""
    return _tree_sum(pid, lambda proc: int(proc.memory_full_info().pss))


#: Every child still running, so the command can end them all when it ends.
LIVE: set[Child] = set()


#: The children's TMPDIR, made on first use and removed by :func:`stop_all`: a cluster
#: ended by SIGKILL (the recovery and takeover benchmarks) cannot remove its runtime dir.
_scratch: str | None = None


def _scratch_dir() -> str:
    global _scratch
    if _scratch is None:
        _scratch = tempfile.mkdtemp(prefix="tc-bench-")
    return _scratch


async def stop_all() -> None:
    global _scratch
    for child in list(LIVE):
        await child.stop()
    if _scratch is not None:
        shutil.rmtree(_scratch, ignore_errors=True)
        _scratch = None


class Child:
    """One child process with its stdout read as lines."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[str] = []
        #: the end of stderr, read when stopped
        self.stderr = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(
        cls,
        name: str,
        argv: Sequence[str],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Child:
        path = str(REPO) if CODE_DIR is None else f"{CODE_DIR}{os.pathsep}{REPO}"
        full_env = {**os.environ, "PYTHONPATH": path, "TMPDIR": _scratch_dir(), **(env or {})}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(cwd or CODE_DIR or REPO),
            env=full_env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        child = cls(name, proc)
        LIVE.add(child)
        return child

    @classmethod
    async def python(cls, name: str, module: str, *args: str) -> Child:
        return await cls.start(name, [sys.executable, "-m", module, *args])

    @classmethod
    async def py_spy(cls, pid: int, out: Path) -> Child:
        """``py-spy record`` attached to ``pid`` (raw collapsed stacks to ``out``) until :meth:`interrupt`."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [spy, "record", "-p", str(pid), "-r", "200", "-f", "raw", "-o", str(out)]
        return await cls.start("py-spy", argv)

    async def interrupt(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """SIGINT (py-spy writes its output on it), then wait."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGINT)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), timeout)
        await self.stop()

    async def expect(self, prefix: str, timeout: float) -> str:  # noqa: ASYNC109
        """The rest of the next stdout line starting with ``prefix``."""
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    raw = await self.proc.stdout.readline()
                    if not raw:
                        raise ChildError(f"{self.name} exited: {await self.stderr_tail()}")
                    line = raw.decode(errors="replace").rstrip("\n")
                    self.lines.append(line)
                    if line.startswith(prefix):
                        return line[len(prefix) :].strip()
        except TimeoutError:
            raise ChildError(
                f"{self.name} said no {prefix!r} within {timeout} s: {await self.stderr_tail()}"
            ) from None

    async def stderr_tail(self) -> str:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 2.0)
        if self.proc.returncode is None or self.proc.stderr is None:
            return "(still running)"
        with contextlib.suppress(Exception):
            data = await asyncio.wait_for(self.proc.stderr.read(), 1.0)
            return data.decode(errors="replace")[-1500:]
        return ""

    async def stop(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """SIGTERM the child's process group, SIGKILL it after ``timeout``; keep its stderr tail."""
        LIVE.discard(self)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        # drain the pipes so no transport outlives the loop
        if self.proc.stdout is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.stdout.read(), 1.0)
        if self.proc.stderr is not None:
            with contextlib.suppress(Exception):
                data = await asyncio.wait_for(self.proc.stderr.read(), 1.0)
                self.stderr = data.decode(errors="replace")[-1500:]
