"""A real ``redis-server`` for tests: started, killed, restarted, always cleaned up.

The whole configuration is on the command line (no config file): a TCP port (a random
free one in 20000-60000 unless given; a taken port makes Redis exit at once, and the next
random port is tried), a unix socket and the data dir in a private temporary directory,
no RDB snapshots, AOF on or off, ``appendfsync always`` with AOF so a restart after
SIGTERM or SIGKILL keeps every acknowledged write::

    with RedisServer(appendonly=True) as server:
        client = redis.Redis.from_url(server.url)
        server.restart(keep_data=True)

Readiness is a PING over the unix socket (a LOADING reply is not ready yet), bounded by
``START_TIMEOUT_S``. Blocking calls (start, stop, restart) take tens of milliseconds; they
are fine to call from async tests. On Linux the server also dies with the thread that
started it (``PR_SET_PDEATHSIG``), so a test run killed outright leaves no server behind;
start servers from a long-lived thread (the test's own), not from ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
PORT_RANGE = (20000, 60000)
PORT_ATTEMPTS = 50


class RedisServerError(RuntimeError):
    pass


class RedisServer:
    """One ``redis-server`` subprocess with its own directory."""

    def __init__(
        self,
        *,
        appendonly: bool = False,
        bind: str = "127.0.0.1",
        port: int | None = None,
        executable: str = "redis-server",
    ) -> None:
        path = shutil.which(executable)
        if path is None:
            raise RedisServerError(f"{executable} not found on PATH")
        self.executable = path
        self.appendonly = appendonly
        self.bind = bind
        self._wanted_port = port
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="tc-redis-"))
        self.socket_path = self.dir / "redis.sock"
        self.log_path = self.dir / "redis.log"

    # -- addresses -----------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RedisServerError("the server was never started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{self.bind}:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RedisServerError("the server is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> RedisServer:
        if self.running:
            raise RedisServerError("already running")
        if self._port is not None:
            self._start_on(self._port)  # a restart keeps its port
            return self
        if self._wanted_port is not None:
            self._start_on(self._wanted_port)
            return self
        tried: list[int] = []
        for _ in range(PORT_ATTEMPTS):
            port = random.randint(*PORT_RANGE)
            tried.append(port)
            try:
                self._start_on(port)
            except _PortTaken:
                continue
            return self
        raise RedisServerError(f"no free port after trying {tried}")

    def stop(self) -> None:
        """SIGTERM (Redis flushes the AOF and exits), then SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # in case a test stopped it
                proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed beyond what ``appendfsync`` already wrote."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def restart(self, keep_data: bool) -> None:
        """Stop, optionally wipe the data (AOF dir, dump.rdb), start on the same port."""
        self.stop()
        if not keep_data:
            shutil.rmtree(self.dir / "appendonlydir", ignore_errors=True)
            for name in ("dump.rdb", "appendonly.aof"):
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / name).unlink()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------

    def _command(self, port: int) -> list[str]:
        return [
            self.executable,
            "--port", str(port),
            "--bind", self.bind,
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--logfile", str(self.log_path),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            *(["--appendfsync", "always"] if self.appendonly else []),
            "--daemonize", "no",
            "--protected-mode", "no",
        ]  # fmt: skip

    def _start_on(self, port: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()
        proc = subprocess.Popen(
            self._command(port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        try:
            self._wait_ready(proc)
        except BaseException:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            raise
        self._proc = proc
        self._port = port

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        delay = 0.005
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log = self._log_tail()
                if "already in use" in log:
                    raise _PortTaken
                raise RedisServerError(f"redis-server exited with {proc.returncode}:\n{log}")
            if self._pong():
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        raise RedisServerError(f"redis-server did not answer PING in {START_TIMEOUT_S} s")

    def _pong(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(os.fspath(self.socket_path))
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"


class _PortTaken(Exception):
    pass


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the starting thread dies (Linux prctl)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
