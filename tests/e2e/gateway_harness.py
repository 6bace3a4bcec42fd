"""Helpers for the gateway endpoint's end-to-end tests: a bot process, a cuttable TCP proxy.

:class:`BotProcess` runs ``tests/e2e/gateway_bot.py`` (an unchanged discord.py
bot) in its own process group, reads its JSON lines, and is killed with its
group at teardown (also when a test fails). :class:`Proxy` forwards TCP between
a client and the endpoint and can cut every connection and refuse new ones for
a while: a client that loses its network for a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster_process import ClusterProcess

BOT_SCRIPT = Path(__file__).resolve().parent / "gateway_bot.py"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class BotProcess:
    process: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(
        cls, rest: str, gateway: str, shards: int, token: str, *extra: str
    ) -> BotProcess:
        """The discord.py bot of ``gateway_bot.py``."""
        argv = [sys.executable, str(BOT_SCRIPT), "--rest", rest, "--gateway", gateway]
        return await cls.launch([*argv, "--shards", str(shards), *extra], token)

    @classmethod
    async def launch(cls, argv: list[str], token: str, cwd: Path = ROOT) -> BotProcess:
        """Any bot process that prints JSON lines (hikari, @discordjs/ws)."""
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            cwd=str(cwd),
            env={**os.environ, "DISCORD_TOKEN": token, "PYTHONPATH": str(ROOT)},
        )
        bot = cls(process)
        bot._readers.append(asyncio.create_task(bot._read_stdout()))
        bot._readers.append(asyncio.create_task(bot._read_stderr()))
        return bot

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            with contextlib.suppress(json.JSONDecodeError):
                self.lines.append(json.loads(line))
            self._changed.set()
        self._changed.set()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.stderr.append(line.decode("utf-8", "replace").rstrip())

    async def wait(self, predicate: Callable[[BotProcess], bool], within_s: float) -> None:
        try:
            async with asyncio.timeout(within_s):
                while not predicate(self):
                    if self.process.returncode is not None:
                        raise AssertionError(f"the bot exited: {self.stderr[-10:]}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"bot: timed out; last lines {self.lines[-5:]}, stderr {self.stderr[-10:]}"
            ) from None

    def of(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == event]

    def dispatches(self, t: str) -> list[dict[str, Any]]:
        return [line for line in self.of("dispatch") if line["t"] == t]

    async def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 5)
        for reader in self._readers:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader


@pytest.fixture
async def bots() -> AsyncIterator[Callable[..., Any]]:
    started: list[BotProcess] = []

    async def start(*args: Any, argv: list[str] | None = None, cwd: Path = ROOT) -> BotProcess:
        if argv is not None:
            bot = await BotProcess.launch(argv, args[0], cwd)
        else:
            bot = await BotProcess.start(*args)
        started.append(bot)
        return bot

    try:
        yield start
    finally:
        for bot in started:
            await bot.kill()


class Proxy:
    """TCP from 127.0.0.1:<port> to ``target``; :meth:`cut` drops everything for a while."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._refuse_until = 0.0
        self.port = 0
        self.cuts = 0

    def retarget(self, host: str, port: int) -> None:
        """New connections go to ``host:port`` (the endpoint restarted on another port)."""
        self._target = (host, port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self, refuse_for_s: float) -> None:
        """Abort every connection now (no close frame) and hold new ones for ``refuse_for_s``."""
        self.cuts += 1
        self._refuse_until = asyncio.get_running_loop().time() + refuse_for_s
        for client, upstream in list(self._pairs):
            for writer in (client, upstream):
                transport = writer.transport
                transport.abort()
        self._pairs.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # During an outage a new connection hangs (as SYNs into a dead network would)
        # until the network is back; a refused connect would make discord.py IDENTIFY.
        wait = self._refuse_until - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)
        # The endpoint may be restarting: keep trying, as a client's connect would hang
        # on a load balancer until a backend is back.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0
        while True:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self._target)
                break
            except OSError:
                if loop.time() > deadline:
                    writer.transport.abort()
                    return
                await asyncio.sleep(0.1)
        pair = (writer, up_writer)
        self._pairs.add(pair)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError, asyncio.CancelledError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        with contextlib.suppress(Exception):
            dst.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for client, upstream in list(self._pairs):
            client.transport.abort()
            upstream.transport.abort()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def gateway_url(run: ClusterProcess, within_s: float = 20.0) -> str:
    line = await run.wait_line(lambda line: line.get("event") == "gateway_listening", within_s)
    url: str = line["gateway"]
    return url
