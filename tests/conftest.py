"""Shared fixtures: simulators on 127.0.0.1:0 and a raw gateway test client.

``sim_factory`` starts simulators with config overrides and stops them all
at teardown::

    async def test_x(sim_factory):
        sim = await sim_factory(shards=2, heartbeat_interval_ms=200)

``RawClient`` speaks the gateway with nothing hidden (no automatic
heartbeats, no reconnects), so tests can break every rule on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from protocol.compression import Compression, make_decompressor
from simulator import Simulator, SimulatorConfig

SimFactory = Callable[..., Awaitable[Simulator]]


@pytest.fixture
async def sim_factory() -> AsyncIterator[SimFactory]:
    started: list[Simulator] = []

    async def make(**overrides: Any) -> Simulator:
        config = SimulatorConfig(**{"host": "127.0.0.1", "port": 0, **overrides})
        sim = Simulator(config)
        await sim.start()
        started.append(sim)
        return sim

    try:
        yield make
    finally:
        for sim in reversed(started):
            await asyncio.wait_for(sim.stop(), 10)


class GatewayClosed(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code}: {reason}")
        self.code = code
        self.reason = reason


class RawClient:
    """A bare gateway connection for tests: send anything, read everything."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
        compression: Compression,
    ) -> None:
        self.http = http
        self.ws = ws
        self.decompressor = make_decompressor(compression)
        self.seq: int | None = None
        self.received: list[dict[str, Any]] = []

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        v: int | str | None = 10,
        encoding: str = "json",
        compress: str = "none",
        query: str | None = None,
    ) -> RawClient:
        if query is None:
            parts = [] if v is None else [f"v={v}"]
            parts.append(f"encoding={encoding}")
            if compress != "none":
                parts.append(f"compress={compress}")
            query = "&".join(parts)
        http = aiohttp.ClientSession()
        try:
            ws = await http.ws_connect(f"{url}?{query}", autoclose=False, max_msg_size=0)
        except BaseException:
            await http.close()
            raise
        return cls(
            http,
            ws,
            Compression(compress)
            if compress in ("zlib-stream", "zstd-stream")
            else Compression.NONE,
        )

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109 (a bounded wait is the point of these helpers)
        """The next whole gateway payload; GatewayClosed when the server closed."""
        while True:
            msg = await self.ws.receive(timeout)
            raw: bytes
            if msg.type is aiohttp.WSMsgType.TEXT:
                raw = msg.data.encode()
            elif msg.type is aiohttp.WSMsgType.BINARY:
                fed = self.decompressor.feed(msg.data)
                if fed is None:
                    continue
                raw = fed
            elif msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
            ):
                raise GatewayClosed(self.ws.close_code, str(msg.extra or ""))
            else:
                raise GatewayClosed(None, f"{msg.type}: {msg.data!r}")
            payload: dict[str, Any] = orjson.loads(raw)
            if payload.get("s") is not None:
                self.seq = payload["s"]
            self.received.append(payload)
            return payload

    async def recv_until(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                payload = await self.recv(timeout)
                if predicate(payload):
                    return payload

    async def recv_op(self, op: int, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109 (a bounded wait is the point of these helpers)
        return await self.recv_until(lambda p: p.get("op") == op, timeout)

    async def recv_event(self, t: str, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109 (a bounded wait is the point of these helpers)
        return await self.recv_until(lambda p: p.get("t") == t, timeout)

    async def expect_close(self, timeout: float = 5.0) -> GatewayClosed:  # noqa: ASYNC109 (a bounded wait is the point of these helpers)
        """Read until the server closes; return the close (code, reason)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.recv(timeout)
        except GatewayClosed as closed:
            return closed
        raise AssertionError("unreachable")

    async def send(self, payload: dict[str, Any] | bytes | str) -> None:
        if isinstance(payload, dict):
            await self.ws.send_str(orjson.dumps(payload).decode())
        elif isinstance(payload, bytes):
            await self.ws.send_str(payload.decode())
        else:
            await self.ws.send_str(payload)

    async def hello(self) -> dict[str, Any]:
        return await self.recv_op(10)

    async def heartbeat(self) -> None:
        await self.send({"op": 1, "d": self.seq})

    async def identify(
        self,
        token: str = "simulated-token",
        shard: list[int] | None = None,
        intents: int = 513,
        **extra: Any,
    ) -> None:
        d: dict[str, Any] = {
            "token": token,
            "intents": intents,
            "properties": {"os": "linux", "browser": "raw-test", "device": "raw-test"},
            **extra,
        }
        if shard is not None:
            d["shard"] = shard
        await self.send({"op": 2, "d": d})

    async def resume(
        self, session_id: str, seq: int | None, token: str = "simulated-token"
    ) -> None:
        await self.send({"op": 6, "d": {"token": token, "session_id": session_id, "seq": seq}})

    async def ready(self, **identify: Any) -> dict[str, Any]:
        """Hello, Identify, and READY's ``d``."""
        await self.hello()
        await self.identify(**identify)
        ready: dict[str, Any] = (await self.recv_event("READY"))["d"]
        return ready

    async def close(self, code: int = 4000) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code=code), 2)
        await self.http.close()

    async def drop(self) -> None:
        """Abort the TCP connection (no close frame)."""
        conn = self.ws._response.connection
        if conn is not None and conn.transport is not None:
            conn.transport.abort()
        await self.http.close()


@pytest.fixture
async def raw_clients() -> AsyncIterator[Callable[..., Awaitable[RawClient]]]:
    """``await connect(url, **kw)`` -> RawClient; every client is closed at teardown."""
    clients: list[RawClient] = []

    async def connect(url: str, **kw: Any) -> RawClient:
        client = await RawClient.connect(url, **kw)
        clients.append(client)
        return client

    try:
        yield connect
    finally:
        for client in clients:
            await client.close()


# -- Redis (tests/redis_server.py) ----------------------------------------------------
# Appended after the fixtures above, hence the late imports.
import os  # noqa: E402
import shutil  # noqa: E402
from collections.abc import Iterator  # noqa: E402

from tests.redis_server import RedisServer  # noqa: E402

RedisFactory = Callable[..., RedisServer]


@pytest.fixture
def redis_factory() -> Iterator[RedisFactory]:
    """``make(appendonly=False, bind="127.0.0.1")`` -> a started RedisServer; all stopped at teardown."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed: .ci/run must install it in CI")
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    started: list[RedisServer] = []

    def make(appendonly: bool = False, bind: str = "127.0.0.1") -> RedisServer:
        server = RedisServer(appendonly=appendonly, bind=bind)
        started.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in reversed(started):
            server.close()


@pytest.fixture
def redis_server(redis_factory: RedisFactory) -> RedisServer:
    """A started redis-server (AOF off) on 127.0.0.1, stopped at teardown."""
    return redis_factory()
