"""CURVE on the control socket and the bearer token on HTTP, on real sockets.

The control socket is libzmq's own CURVE server with our ZAP handler: a client
with an allowed key is answered, one without a key or with a key not allowed
gets nothing (the request times out) and the server keeps answering the
others; stopping and starting again binds the ZAP handler again. HTTP runs on
127.0.0.1 with a token given explicitly (the refusal to go off loopback
without one is a config check, tests/unit/test_curve_config.py).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zmq
import zmq.asyncio

from cluster.control import ControlServer
from cluster.http import HealthServer
from cluster.status import ClusterStatus
from protocol.curvezmq import CurveServerKeys, encode_key, new_key_pair
from titanium_client import CommandTimeoutError, ControlCluster, connect

pytestmark = pytest.mark.timeout(60)

PRESENCE: dict[str, Any] = {"since": None, "activities": [], "status": "idle", "afk": False}
TOKEN = "k9Zq3-a-token-only-this-test-knows"
KeyPair = tuple[bytes, bytes]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[int] = []

    async def send(self, shard_id: int, payload: bytes) -> None:
        self.calls.append(shard_id)


@pytest.fixture(scope="module")
def server_pair() -> KeyPair:
    return new_key_pair()


@pytest.fixture(scope="module")
def client_pair() -> KeyPair:
    return new_key_pair()


@pytest.fixture
async def context() -> AsyncIterator[zmq.asyncio.Context]:
    ctx = zmq.asyncio.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


def client(
    endpoint: str, server: KeyPair, pair: KeyPair | None, timeout: float = 5.0
) -> ControlCluster:
    if pair is None:
        return ControlCluster(endpoint, timeout=timeout)
    return ControlCluster(
        endpoint,
        timeout=timeout,
        curve_server_key=encode_key(server[0]),
        curve_secret_key=encode_key(pair[1]),
    )


async def test_only_allowed_keys_are_answered(
    context: zmq.asyncio.Context, server_pair: KeyPair, client_pair: KeyPair
) -> None:
    recorder = Recorder()
    keys = CurveServerKeys(server_pair[1], frozenset({client_pair[0]}))
    # the supervisor's shared context: other sockets in it (NULL, no ZAP domain) are unaffected
    server = ControlServer(
        "tcp://127.0.0.1:0", 4, range(4), recorder.send, context=context, curve=keys
    )
    await server.start()
    clients: list[ControlCluster] = []
    try:
        endpoint = server.endpoint
        allowed = client(endpoint, server_pair, client_pair)
        keyless = client(endpoint, server_pair, None, timeout=0.5)
        stranger = client(endpoint, server_pair, new_key_pair(), timeout=0.5)
        wrong_server = ControlCluster(
            endpoint,
            timeout=0.5,
            curve_server_key=new_key_pair()[0],
            curve_secret_key=client_pair[1],
        )
        clients += [allowed, keyless, stranger, wrong_server]
        assert await allowed.send(3, PRESENCE, shard_id=1) == (1,)
        for refused in (keyless, stranger, wrong_server):
            with pytest.raises(CommandTimeoutError):
                await refused.send(3, PRESENCE, shard_id=2)
        assert await allowed.send(3, PRESENCE, all=True) == (0, 1, 2, 3)
        assert recorder.calls == [1, 0, 1, 2, 3]
        assert server.curve_refused >= 1

        # a NULL ROUTER/DEALER pair in the same context still works (no ZAP domain: no ZAP)
        plain = context.socket(zmq.ROUTER)
        plain.bind("inproc://plain")
        dealer = context.socket(zmq.DEALER)
        dealer.connect("inproc://plain")
        await dealer.send(b"hi")
        async with asyncio.timeout(5):
            assert (await plain.recv_multipart())[-1] == b"hi"
        plain.close(0)
        dealer.close(0)

        # stop and start again (a fenced owner owning again): the ZAP handler binds anew
        await server.stop()
        server = ControlServer(
            "tcp://127.0.0.1:0", 4, range(4), recorder.send, context=context, curve=keys
        )
        await server.start()
        again = client(server.endpoint, server_pair, client_pair)
        clients.append(again)
        assert await again.send(3, PRESENCE, shard_id=0) == (0,)
    finally:
        for c in clients:
            await c.close()
        await server.stop()


async def test_connect_takes_the_keys(server_pair: KeyPair, client_pair: KeyPair) -> None:
    recorder = Recorder()
    keys = CurveServerKeys(server_pair[1], frozenset({client_pair[0]}))
    server = ControlServer("tcp://127.0.0.1:0", 2, range(2), recorder.send, curve=keys)
    async with (
        server,
        connect(
            server.endpoint, curve_server_key=server_pair[0], curve_secret_key=client_pair[1]
        ) as cluster,
    ):
        assert await cluster.send(3, PRESENCE, shard_id=1) == (1,)
    with pytest.raises(ValueError, match="control socket"):
        connect("redis://127.0.0.1:6379/0", shard_count=1, curve_secret_key=client_pair[1])


async def test_a_bind_failure_with_curve_releases_everything(
    server_pair: KeyPair, client_pair: KeyPair
) -> None:
    keys = CurveServerKeys(server_pair[1], frozenset({client_pair[0]}))
    taken = ControlServer("tcp://127.0.0.1:0", 1, [0], Recorder().send)
    await taken.start()
    try:
        # its own context: the ZAP handler must be closed before the context terms (or it hangs)
        clash = ControlServer(taken.endpoint, 1, [0], Recorder().send, curve=keys)
        with pytest.raises(zmq.ZMQError):
            await asyncio.wait_for(clash.start(), 5)
    finally:
        await taken.stop()


# -- HTTP ---------------------------------------------------------------------------------------------


@pytest.fixture
async def http_url() -> AsyncIterator[str]:
    status = ClusterStatus(2, [(0, (0, 1))])
    server = HealthServer(status, "127.0.0.1", 0, token=TOKEN)
    await server.start()
    try:
        yield server.url
    finally:
        await server.stop()


async def get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.text()


async def test_the_token_guards_status_metrics_and_the_page(http_url: str) -> None:
    for path in ("/status", "/metrics", "/", "/nope"):
        code, text = await get(http_url + path)
        assert code == 401, path
        assert TOKEN not in text
        code, _ = await get(http_url + path, token="not-" + TOKEN)
        assert code == 401
    for path in ("/status", "/metrics", "/"):
        code, text = await get(http_url + path, token=TOKEN)
        assert code == 200, path
        assert TOKEN not in text
    # the probes stay open
    for path in ("/health", "/livez"):
        code, _ = await get(http_url + path)
        assert code in (200, 503), path


async def test_cluster_status_sends_the_token(http_url: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    base = [sys.executable, "-c", "from cluster.cli import main; main()", "status"]
    health = http_url.removeprefix("http://")

    async def run(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            *base,
            "--health",
            health,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, out, _ = await run("--http-token-file", str(token_file), "--json")
    assert code == 0 and '"shards"' in out
    code, _, err = await run()
    assert code == 1 and "pass --http-token-file FILE" in err
    assert TOKEN not in err
