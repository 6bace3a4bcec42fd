"""Helpers for end-to-end tests: ``cluster up`` as a real subprocess, and a real SUB client.

:class:`ClusterProcess` runs ``cluster up --log-format json`` in its own
process group, reads its JSON log lines as they come (the ``listening`` line
names the bound HTTP and PUB endpoints, so tests bind port 0), and is killed
with its whole group at teardown. :class:`Subscriber` is a ZeroMQ SUB that
records every ``(shard_id, seq)`` it sees, counting duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import zmq
import zmq.asyncio
import zmq.utils.z85

from protocol.pubframe import decode_event

CLUSTER = [sys.executable, "-c", "from cluster.cli import main; main()"]


@dataclass
class ClusterProcess:
    process: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    stdout: bytes = b""
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        *args: str,
        env: dict[str, str] | None = None,
        command: str = "up",
        wrap: Callable[[list[str]], list[str]] | None = None,
    ) -> ClusterProcess:
        """``cluster up --log-format json ARGS`` (or ``cluster COMMAND ARGS``).

        ``wrap`` turns the argv into another (e.g. run it in a host's network namespace).
        """
        prefix = ["up", "--log-format", "json"] if command == "up" else [command]
        argv = [*CLUSTER, *prefix, *args]
        if wrap is not None:
            argv = wrap(argv)
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        run = cls(process)
        run._reader = asyncio.create_task(run._read())
        return run

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while True:
            line = await self.process.stderr.readline()
            if not line:
                break
            text = line.decode("utf-8", "replace").rstrip("\n")
            self.raw.append(text)
            with contextlib.suppress(orjson.JSONDecodeError):
                obj = orjson.loads(text)
                if isinstance(obj, dict):
                    self.lines.append(obj)
            self._changed.set()
        self._changed.set()

    async def wait_line(
        self, predicate: Callable[[dict[str, Any]], bool], within_s: float
    ) -> dict[str, Any]:
        async with asyncio.timeout(within_s):
            while True:
                for line in self.lines:
                    if predicate(line):
                        return line
                if (
                    self.process.returncode is not None
                    and self._reader is not None
                    and self._reader.done()
                ):
                    raise AssertionError(
                        f"cluster up exited {self.process.returncode}: {self.raw[-5:]}"
                    )
                self._changed.clear()
                await self._changed.wait()

    async def wait_text(self, text: str, within_s: float) -> str:
        """Wait for a stderr line containing ``text`` (JSON or not)."""
        async with asyncio.timeout(within_s):
            while True:
                for line in self.raw:
                    if text in line:
                        return line
                if self._reader is not None and self._reader.done():
                    raise AssertionError(f"exited without {text!r}: {self.raw[-5:]}")
                self._changed.clear()
                await self._changed.wait()

    async def listening(self, within_s: float = 20.0) -> dict[str, Any]:
        return await self.wait_line(lambda line: line.get("event") == "listening", within_s)

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    async def wait(self, within_s: float) -> int:
        code = await asyncio.wait_for(self.process.wait(), within_s)
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reader, 5)
        assert self.process.stdout is not None
        self.stdout = await self.process.stdout.read()
        return code

    async def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 5)
        else:
            # the workers are in the same group: make sure none outlives the test
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader

    def text(self) -> str:
        return "\n".join(self.raw) + "\n" + self.stdout.decode("utf-8", "replace")


@pytest.fixture
async def clusters() -> AsyncIterator[Callable[..., Any]]:
    started: list[ClusterProcess] = []
    # The processes' TMPDIR: a supervisor killed by SIGKILL cannot remove its runtime
    # directory (titanium-*), so the test removes them all at the end.
    scratch = tempfile.mkdtemp(prefix="tc-run-")

    async def start(
        *args: str,
        env: dict[str, str] | None = None,
        command: str = "up",
        wrap: Callable[[list[str]], list[str]] | None = None,
    ) -> ClusterProcess:
        run = await ClusterProcess.start(
            *args, env={"TMPDIR": scratch, **(env or {})}, command=command, wrap=wrap
        )
        started.append(run)
        return run

    try:
        yield start
    finally:
        for run in started:
            await run.kill()
        shutil.rmtree(scratch, ignore_errors=True)


async def http_get(url: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response,
    ):
        body = await response.read()
        if response.content_type == "application/json":
            return response.status, orjson.loads(body)
        return response.status, body.decode()


async def wait_http(url: str, predicate: Callable[[int, Any], bool], within_s: float) -> Any:
    """Poll ``url`` (every 50 ms) until ``predicate(status, body)``; return the body."""
    async with asyncio.timeout(within_s):
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                status, body = await http_get(url)
                if predicate(status, body):
                    return body
            await asyncio.sleep(0.05)


@dataclass(frozen=True)
class CurveKeys:
    """What a test needs for a cluster off loopback: key files, a token, and its SUB's keys."""

    directory: Path
    server_public: bytes
    client_public: bytes
    client_secret: bytes
    http_token: str

    @classmethod
    def make(cls, directory: Path) -> CurveKeys:
        from cluster.curve import load_single_key, write_key_pair

        _, _, server_public = write_key_pair(directory, "server")
        clients = directory / "clients"
        _, client_secret_file, client_public = write_key_pair(clients, "test")
        client_secret = load_single_key(client_secret_file, "key")
        (clients / "test.key_secret").unlink()  # the clients directory holds public keys
        token = "test-http-token-0123456789abcdef"
        (directory / "http-token").write_text(token)
        z85 = zmq.utils.z85.encode
        return cls(directory, z85(server_public), z85(client_public), z85(client_secret), token)

    def args(self) -> list[str]:
        """The options of ``cluster up`` that let it bind off loopback."""
        return [
            "--curve-secret",
            str(self.directory / "server.key_secret"),
            "--curve-clients",
            str(self.directory / "clients"),
            "--http-token-file",
            str(self.directory / "http-token"),
        ]


class Subscriber:
    """A SUB client that records every ``(shard_id, seq)`` it receives."""

    def __init__(self, endpoint: str, prefix: bytes = b"", curve: CurveKeys | None = None) -> None:
        self.context = zmq.asyncio.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve is not None:  # a cluster off loopback: CURVE with a key it lets in
            self.socket.curve_serverkey = curve.server_public
            self.socket.curve_publickey = curve.client_public
            self.socket.curve_secretkey = curve.client_secret
        self.socket.setsockopt(zmq.RECONNECT_IVL, 10)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, prefix)
        self.socket.connect(endpoint)
        self.seen: Counter[tuple[int, int]] = Counter()
        self.event_ids: Counter[int] = Counter()
        self.topics: Counter[str] = Counter()
        #: (shard_id, seq) -> the session id its header named (the last one seen)
        self.sessions: dict[tuple[int, int], str | None] = {}
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            frames = await self.socket.recv_multipart()
            event = decode_event(frames)
            self.seen[(event.shard_id, event.seq)] += 1
            self.sessions[(event.shard_id, event.seq)] = event.session_id
            self.topics[event.topic] += 1
            marker = b'"_sim_event_id":'
            at = event.payload.find(marker)
            if at >= 0:
                end = at + len(marker)
                digits = end
                while digits < len(event.payload) and event.payload[digits : digits + 1].isdigit():
                    digits += 1
                self.event_ids[int(event.payload[end:digits])] += 1
            self._changed.set()

    async def wait_for(self, predicate: Callable[[Subscriber], bool], within_s: float) -> None:
        async with asyncio.timeout(within_s):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

    def duplicates(self) -> list[tuple[int, int]]:
        return [key for key, n in self.seen.items() if n > 1]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self.socket.close(0)
        self.context.term()


@pytest.fixture
async def subscribers() -> AsyncIterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(endpoint: str, prefix: bytes = b"", curve: CurveKeys | None = None) -> Subscriber:
        sub = Subscriber(endpoint, prefix, curve)
        made.append(sub)
        return sub

    try:
        yield make
    finally:
        for sub in made:
            await sub.close()
