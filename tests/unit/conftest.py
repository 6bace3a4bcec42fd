"""Fixtures shared by the unit tests of the worker's output channel (worker.output.ChannelOutput)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from protocol.zmtp import GREETING_SIZE, handshake
from worker import output
from worker.output import connect

Pair = tuple[socket.socket, zmq.Socket[bytes]]
TightPair = tuple[socket.socket, "RawPull"]


class RawPull:
    """A PULL of a few lines that reads only when asked (``poll``, ``recv_multipart``, as a
    pyzmq socket's), so a test decides when the worker's channel fills: libzmq's PULL
    reads on its own thread whenever its queue has room."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()
        self._greeted = False
        self._frames: list[bytes] = []
        self._messages: list[list[bytes]] = []

    def poll(self, timeout_ms: int) -> bool:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            self._parse()
            if self._messages:
                return True
            left = max(0.0, deadline - time.monotonic())
            if not select.select([self.sock], [], [], left)[0]:
                return False
            data = self.sock.recv(65536)
            if not data:
                return False
            self._buf += data

    def recv_multipart(self) -> list[bytes]:
        assert self.poll(5000), "no message within 5 s"
        return self._messages.pop(0)

    def _parse(self) -> None:
        buf = self._buf
        if not self._greeted:
            if len(buf) < GREETING_SIZE:
                return
            del buf[:GREETING_SIZE]
            self._greeted = True
        while len(buf) >= 2:
            flags = buf[0]
            head = 9 if flags & 0x02 else 2
            if len(buf) < head:
                return
            size = int.from_bytes(buf[1:head], "big")
            if len(buf) < head + size:
                return
            frame = bytes(buf[head : head + size])
            del buf[: head + size]
            if flags & 0x04:
                continue  # READY and other commands
            self._frames.append(frame)
            if not flags & 0x01:
                self._messages.append(self._frames)
                self._frames = []


@pytest.fixture
def tight_pair(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[socket.socket, RawPull]]:
    """The worker's channel socket connected to a :class:`RawPull` with small kernel buffers,
    and the worker refuses as soon as a byte waits for the kernel: the channel fills at once."""
    monkeypatch.setattr(output, "QUEUE_BYTES", 1)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # before listen: the accepted socket's window is small from its first segment
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    accepted: list[socket.socket] = []

    def accept() -> None:
        sock, _ = listener.accept()
        sock.sendall(handshake(b"PULL"))
        accepted.append(sock)

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        sock = connect(f"tcp://127.0.0.1:{listener.getsockname()[1]}")
    finally:
        thread.join(10)
        listener.close()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        yield sock, RawPull(accepted[0])
    finally:
        sock.close()
        accepted[0].close()


@contextlib.contextmanager
def channel_pair() -> Iterator[Pair]:
    """The worker's channel socket, its ZMTP handshake done, connected to a libzmq PULL over
    TCP loopback (sock, pull)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    sock = connect(f"tcp://127.0.0.1:{port}")
    try:
        yield sock, pull
    finally:
        sock.close()
        pull.close(linger=0)
        ctx.term()


@pytest.fixture
def pair() -> Iterator[Pair]:
    with channel_pair() as p:
        yield p
