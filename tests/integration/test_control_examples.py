"""The example clients in scripts/examples/ against real sockets: they work as documented."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import zmq
import zmq.asyncio

from cluster.control import ControlServer
from protocol.pubframe import event_frames

pytestmark = pytest.mark.timeout(60)

EXAMPLES = Path(__file__).resolve().parents[2] / "scripts" / "examples"


async def run(*argv: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(20):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def control() -> AsyncIterator[tuple[ControlServer, list[tuple[int, bytes]]]]:
    calls: list[tuple[int, bytes]] = []

    async def send(shard_id: int, payload: bytes) -> None:
        calls.append((shard_id, payload))

    server = ControlServer("tcp://127.0.0.1:0", 4, range(4), send)
    await server.start()
    try:
        yield server, calls
    finally:
        await server.stop()


async def test_send_command_sets_the_presence_everywhere(
    control: tuple[ControlServer, list[tuple[int, bytes]]],
) -> None:
    server, calls = control
    script = str(EXAMPLES / "send_command.py")
    code, out, err = await run(
        sys.executable,
        script,
        "--control",
        server.endpoint,
        "--all",
        "presence",
        "idle",
        "Sharding",
    )
    assert code == 0, err
    assert orjson.loads(out) == {"ok": True, "shard_ids": [0, 1, 2, 3]}
    assert [c[0] for c in calls] == [0, 1, 2, 3]
    assert orjson.loads(calls[0][1]) == {
        "op": 3,
        "d": {
            "since": None,
            "activities": [{"name": "Sharding", "type": 0}],
            "status": "idle",
            "afk": False,
        },
    }
    code, out, _ = await run(
        sys.executable, script, "--control", server.endpoint, "--shard", "9", "presence"
    )
    assert code == 1 and "unknown shard 9" in orjson.loads(out)["error"]


@pytest.fixture
async def xpub() -> AsyncIterator[tuple[zmq.asyncio.Socket, str]]:
    context = zmq.asyncio.Context()
    sock = context.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:0")
    try:
        yield sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)
    finally:
        sock.close(0)
        context.term()


async def publish_session(sock: zmq.asyncio.Socket) -> None:
    """Wait for a subscriber, then READY, two messages, a repeated seq and a gap."""
    async with asyncio.timeout(15):
        assert (await sock.recv())[:1] == b"\x01"
    for topic, seq, d in [
        ("READY", 1, {"session_id": "s"}),
        ("MESSAGE_CREATE", 2, {"guild_id": "77", "id": "1"}),
        ("MESSAGE_CREATE", 2, {"guild_id": "77", "id": "1"}),  # a duplicate
        ("MESSAGE_CREATE", 5, {"guild_id": "78", "id": "2"}),  # a gap
    ]:
        payload = orjson.dumps({"op": 0, "s": seq, "t": topic, "d": d})
        await sock.send_multipart(event_frames(topic.encode(), 3, seq, payload))


async def test_the_python_subscriber_prints_events_and_checks_the_sequence(
    xpub: tuple[zmq.asyncio.Socket, str],
) -> None:
    sock, endpoint = xpub
    script = str(EXAMPLES / "subscriber.py")
    running = asyncio.create_task(run(sys.executable, script, "--pub", endpoint, "--count", "4"))
    await publish_session(sock)
    code, out, err = await running
    assert code == 0, err
    assert out.splitlines() == [
        "shard 3 seq 1 READY",
        "shard 3 seq 2 MESSAGE_CREATE guild 77",
        "shard 3 seq 2 MESSAGE_CREATE guild 77",
        "shard 3 seq 5 MESSAGE_CREATE guild 78",
    ]
    assert err.splitlines()[-1] == "4 events, 1 gaps, 1 duplicates"


async def test_the_node_subscriber(xpub: tuple[zmq.asyncio.Socket, str]) -> None:
    node = shutil.which("node")
    if node is None or not (EXAMPLES / "node" / "node_modules" / "zeromq").is_dir():
        why = "needs node and `npm install` in scripts/examples/node (the zeromq package)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}: .ci/run installs both in CI")
        pytest.skip(why)
    sock, endpoint = xpub
    script = str(EXAMPLES / "node" / "subscriber.mjs")
    running = asyncio.create_task(
        run(node, script, "--pub", endpoint, "--count", "4", "--filter", "")
    )
    await publish_session(sock)
    code, out, err = await running
    assert code == 0, err
    assert out.splitlines()[1] == "shard 3 seq 2 MESSAGE_CREATE guild 77"
    assert len(out.splitlines()) == 4 and err.strip() == "4 events"
