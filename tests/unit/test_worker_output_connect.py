"""Opening the worker's channel (worker.output.connect) and losing it, on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol import ipc
from protocol.zmtp import GREETING, command, handshake, metadata
from worker.output import ChannelClosedError, ChannelOutput, connect

pytestmark = pytest.mark.timeout(30)


@contextlib.contextmanager
def serving(path: str, answer: bytes, *, then_close: bool = False) -> Iterator[None]:
    """A unix listener at ``path`` that answers one connection with ``answer`` (then, with
    ``then_close``, closes it once our handshake is in); all closed when the block ends."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    done = threading.Event()

    def serve() -> None:
        sock, _ = listener.accept()
        with sock:
            sock.sendall(answer)
            if then_close:
                sock.recv(4096)
                return
            done.wait(10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(10)
        listener.close()


def test_a_peer_that_is_not_a_pull_is_refused_with_its_type(tmp_path: Path) -> None:
    path = str(tmp_path / "events")
    with serving(path, handshake(b"PUB")), pytest.raises(ChannelClosedError, match="b'PUB'"):
        connect(f"ipc://{path}", timeout_s=5)


def test_a_peer_that_is_not_zmtp_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "events")
    with (
        serving(path, b"HTTP/1.1 400 Bad Request\r\n\r\n"),
        pytest.raises(ChannelClosedError, match="not a ZMTP 3 greeting"),
    ):
        connect(f"ipc://{path}", timeout_s=5)


def test_nothing_listening_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ChannelClosedError, match="cannot open the channel"):
        connect(f"ipc://{tmp_path}/nobody", timeout_s=5)
    with pytest.raises(ChannelClosedError, match="ipc:// or tcp://"):
        connect("inproc://events")


def test_a_silent_peer_times_out(tmp_path: Path) -> None:
    path = str(tmp_path / "events")
    # a greeting, never a READY
    with serving(path, GREETING), pytest.raises(ChannelClosedError, match="timed out"):
        connect(f"ipc://{path}", timeout_s=0.3)


async def test_a_supervisor_gone_abandons_the_channel_and_nobody_waits(tmp_path: Path) -> None:
    path = str(tmp_path / "events")
    ready = GREETING + command(b"READY", metadata(b"Socket-Type", b"PULL"))
    with serving(path, ready, then_close=True):
        sock = await asyncio.to_thread(connect, f"ipc://{path}", 5)
        out = ChannelOutput(sock, asyncio.get_running_loop())
        lost: list[bool] = []
        out.on_lost = lambda: lost.append(True)
        report = ipc.encode_shard_report(ipc.ShardReport(0, "ready", 1, "s", "wss://r"))
        async with asyncio.timeout(5):
            while not out.abandoned:
                await out.send(report)  # EPIPE once the peer's end is closed
                await asyncio.sleep(0.01)
            await out.drain()
            assert out.event(0, 1, 2, b"T", b"{}")  # taken and dropped: no shard waits
            await out.send(report)
            await asyncio.sleep(0)
        assert lost == [True]  # the group stops: its replacement resumes the shards
        out.close(linger_s=1.0)
