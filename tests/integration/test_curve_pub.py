"""CURVE on the PUB socket, on real sockets: libzmq SUBs against cluster/publisher.py's CurveZMQ.

libzmq's own CURVE client (``curve_serverkey``/``curve_publickey``/``curve_secretkey``)
is the reference: with an allowed key it gets every event in order (checked by
seq), boxed frame by frame, heartbeats answered inside boxes; without a key,
with a key not allowed or with another server key it gets nothing, and the
publisher goes on serving the others. The consumer library and ``cluster
tail`` (a real process) take keys the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from cluster.curve import write_key_pair
from cluster.publisher import Publisher
from protocol.curvezmq import CurveServerKeys, encode_key, new_key_pair
from protocol.pubframe import decode_event, encode_header
from titanium_client.pub import PubSubscription, read_key_file

pytestmark = pytest.mark.timeout(60)

KeyPair = tuple[bytes, bytes]


@pytest.fixture(scope="module")
def server_pair() -> KeyPair:
    return new_key_pair()


@pytest.fixture(scope="module")
def client_pair() -> KeyPair:
    return new_key_pair()


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


@pytest.fixture
async def publisher(
    context: zmq.Context[zmq.Socket[bytes]], server_pair: KeyPair, client_pair: KeyPair
) -> AsyncIterator[Publisher]:
    keys = CurveServerKeys(server_pair[1], frozenset({client_pair[0]}))
    pub = Publisher(context, "tcp://127.0.0.1:0", hwm=10_000, curve=keys)
    pub.start(asyncio.get_running_loop())
    try:
        yield pub
    finally:
        pub.close()


def sub(
    context: zmq.Context[zmq.Socket[bytes]],
    endpoint: str,
    *,
    server: bytes | None = None,
    pair: KeyPair | None = None,
    kind: int = zmq.SUB,
    heartbeat_ms: int = 0,
) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if server is not None and pair is not None:
        sock.curve_serverkey = encode_key(server).encode()
        sock.curve_publickey = encode_key(pair[0]).encode()
        sock.curve_secretkey = encode_key(pair[1]).encode()
    if heartbeat_ms:
        sock.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, heartbeat_ms * 4)
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


async def wait_until(predicate: Callable[[], bool], within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def read_all(sock: zmq.Socket[bytes], quiet_s: float = 0.3) -> list[tuple[str, int]]:
    got: list[tuple[str, int]] = []
    last = time.monotonic()
    while time.monotonic() - last < quiet_s:
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            await asyncio.sleep(0.002)
            continue
        event = decode_event(frames)
        got.append((event.topic, event.seq))
        last = time.monotonic()
    return got


def publish(publisher: Publisher, first: int, count: int, payload_size: int = 300) -> None:
    for seq in range(first, first + count):
        # sizes around the short/long frame boundary (255) and well past it
        body = b'{"op":0,"s":%d,"d":"' % seq + b"x" * ((seq * 7) % payload_size) + b'"}'
        publisher.publish(b"MESSAGE_CREATE", encode_header(0, seq), body)
        if seq % 64 == 0:
            publisher.flush()
    publisher.flush()


async def test_allowed_key_gets_every_event_and_the_others_get_nothing(
    context: zmq.Context[zmq.Socket[bytes]],
    publisher: Publisher,
    server_pair: KeyPair,
    client_pair: KeyPair,
) -> None:
    good = sub(context, publisher.endpoint, server=server_pair[0], pair=client_pair)
    keyless = sub(context, publisher.endpoint)
    stranger = sub(context, publisher.endpoint, server=server_pair[0], pair=new_key_pair())
    wrong_server = sub(context, publisher.endpoint, server=new_key_pair()[0], pair=client_pair)
    await wait_until(lambda: publisher.subscribers == 1)
    # the stranger's INITIATE was answered with ERROR 400 and a close
    await wait_until(lambda: publisher.refused >= 1)
    publish(publisher, 1, 500)
    got = await read_all(good)
    assert [seq for _, seq in got] == list(range(1, 501))
    assert publisher.subscribers == 1 and publisher.dropped == 0
    (stats,) = publisher.subscriber_stats()
    assert stats["client_key"] == encode_key(client_pair[0])
    for other in (keyless, stranger, wrong_server):
        assert await read_all(other, quiet_s=0.1) == []
    # they keep knocking (libzmq reconnects) and the allowed one keeps getting events
    publish(publisher, 501, 100)
    assert [seq for _, seq in await read_all(good)] == list(range(501, 601))
    for sock in (good, keyless, stranger, wrong_server):
        sock.close(0)


async def test_a_key_not_allowed_is_told_400(
    context: zmq.Context[zmq.Socket[bytes]], publisher: Publisher, server_pair: KeyPair
) -> None:
    stranger: zmq.Socket[bytes] = context.socket(zmq.SUB)
    stranger.setsockopt(zmq.LINGER, 0)
    stranger.curve_serverkey = encode_key(server_pair[0]).encode()
    public, secret = new_key_pair()
    stranger.curve_publickey = encode_key(public).encode()
    stranger.curve_secretkey = encode_key(secret).encode()
    monitor = stranger.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    try:
        stranger.connect(publisher.endpoint)
        assert await asyncio.to_thread(monitor.poll, 5000)
        event = recv_monitor_message(monitor)
        assert (event["event"], event["value"]) == (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400)
    finally:
        stranger.disable_monitor()
        monitor.close(0)
        stranger.close(0)


async def test_heartbeats_are_answered_inside_boxes_and_xsub_works(
    context: zmq.Context[zmq.Socket[bytes]],
    publisher: Publisher,
    server_pair: KeyPair,
    client_pair: KeyPair,
) -> None:
    # A PING every 50 ms, the connection dropped after 200 ms without an answer.
    beating = sub(
        context, publisher.endpoint, server=server_pair[0], pair=client_pair, heartbeat_ms=50
    )
    monitor = beating.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    xsub = sub(context, publisher.endpoint, server=server_pair[0], pair=client_pair, kind=zmq.XSUB)
    xsub.send(b"\x01MESSAGE_")
    try:
        await wait_until(lambda: publisher.subscribers == 2)
        await asyncio.sleep(0.6)  # a dozen PING/PONG round trips
        publish(publisher, 1, 20)
        assert [seq for _, seq in await read_all(beating)] == list(range(1, 21))
        assert [seq for _, seq in await read_all(xsub, quiet_s=0.05)] == list(range(1, 21))
        assert not monitor.poll(0), "the connection was dropped: a PONG went missing"
        assert publisher.refused == 0
    finally:
        beating.disable_monitor()
        monitor.close(0)
        beating.close(0)
        xsub.close(0)


async def test_an_allowed_key_on_a_dealer_is_refused(
    context: zmq.Context[zmq.Socket[bytes]],
    publisher: Publisher,
    server_pair: KeyPair,
    client_pair: KeyPair,
) -> None:
    dealer = sub(
        context, publisher.endpoint, server=server_pair[0], pair=client_pair, kind=zmq.DEALER
    )
    try:
        await wait_until(lambda: publisher.refused >= 1)
        assert publisher.subscribers == 0
    finally:
        dealer.close(0)


async def test_the_consumer_library_takes_keys_from_key_files(
    context: zmq.Context[zmq.Socket[bytes]],
    publisher: Publisher,
    server_pair: KeyPair,
    client_pair: KeyPair,
    tmp_path: Path,
) -> None:
    (tmp_path / "server.key").write_text(f"# the cluster\n{encode_key(server_pair[0])}\n")
    (tmp_path / "bot.key_secret").write_text(f"{encode_key(client_pair[1])}\n")
    allowed = PubSubscription(
        publisher.endpoint,
        curve_server_key=read_key_file(tmp_path / "server.key"),
        curve_secret_key=read_key_file(tmp_path / "bot.key_secret"),
    )
    keyless = PubSubscription(publisher.endpoint)
    try:
        await allowed.start()
        await keyless.start()
        await wait_until(lambda: publisher.subscribers == 1)
        publish(publisher, 1, 50)
        async with asyncio.timeout(5):
            seqs = [(await anext(allowed)).seq for _ in range(50)]
        assert seqs == list(range(1, 51))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await anext(keyless)
    finally:
        await allowed.close()
        await keyless.close()
    with pytest.raises(ValueError, match="curve_secret_key"):
        PubSubscription(publisher.endpoint, curve_server_key=encode_key(server_pair[0]))
    with pytest.raises(ValueError, match="public half"):
        PubSubscription(
            publisher.endpoint,
            curve_server_key=server_pair[0],
            curve_secret_key=client_pair[1],
            curve_public_key=server_pair[0],
        )


async def test_cluster_tail_with_keys_prints_events(
    publisher: Publisher, server_pair: KeyPair, tmp_path: Path
) -> None:
    """``cluster tail --curve-server-key --curve-secret`` as a real process."""
    (tmp_path / "server.key").write_text(f"{encode_key(server_pair[0])}\n")
    _, tail_secret, tail_public = write_key_pair(tmp_path, "tail")
    assert publisher.curve is not None
    publisher.curve = CurveServerKeys(
        publisher.curve.secret_key, publisher.curve.allowed | {tail_public}
    )
    argv = [
        sys.executable,
        "-c",
        "from cluster.cli import main; main()",
        "tail",
        "--pub",
        publisher.endpoint,
        "--count",
        "5",
        "--timeout",
        "20",
        "--curve-server-key",
        str(tmp_path / "server.key"),
        "--curve-secret",
        str(tail_secret),
    ]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        await wait_until(lambda: publisher.subscribers == 1, within_s=20)
        publish(publisher, 1, 5)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
    assert process.returncode == 0, stderr
    assert [line.split()[1] for line in stdout.decode().splitlines()] == ["1", "2", "3", "4", "5"]
    secret_text = tail_secret.read_text().split()[-1]
    assert secret_text.encode() not in stdout + stderr
    assert b"CURVE" in stderr
