"""Listening sockets bound as libzmq binds them, and their connections accepted on the
event loop, for the endpoints the cluster serves itself with ZMTP (``--pub``:
cluster/publisher.py; the workers' channel: cluster/channel.py).

``tcp://HOST:PORT`` (an IPv4 address, ``[IPv6]``, ``*``, a host name or an
interface name; port ``*`` or 0: any) and ``ipc://PATH`` (``ipc://@name``:
Linux's abstract namespace); a bind that fails raises :class:`zmq.ZMQError`, as
libzmq's did, so callers report it the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from typing import Any, Final

import zmq

log = logging.getLogger(__name__)

#: Pending connections a listening socket keeps (libzmq's ZMQ_BACKLOG default).
LISTEN_BACKLOG: Final = 100
#: Connections accepted per wake-up of a listening socket (the loop serves the rest too).
ACCEPTS_PER_WAKE: Final = 64
#: How long accepting pauses when it fails (out of descriptors): the listener stays readable.
ACCEPT_PAUSE_S: Final = 0.1
#: ioctl asking an interface's IPv4 address (linux/sockios.h), for ``tcp://eth0:PORT``
_SIOCGIFADDR: Final = 0x8915


class Listener:
    """A socket listening on ``endpoint`` (bound now, see :func:`listen`) whose connections,
    once :meth:`start` registered it with a loop, are accepted a few per wake-up and
    handed to ``on_connection`` non-blocking (TCP without Nagle's delay, as libzmq's).
    Accepting pauses for :data:`ACCEPT_PAUSE_S` when it fails (EMFILE and the like:
    the listener stays readable, so it would spin)."""

    def __init__(
        self, endpoint: str, on_connection: Callable[[socket.socket], None], name: str
    ) -> None:
        self.sock, self.endpoint, self._unlink = listen(endpoint)
        self._on_connection = on_connection
        #: who listens, for the log ("PUB", "the workers' channel")
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pause: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._accept)

    def stop(self) -> None:
        """Stop accepting (pending connections wait in the backlog)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self.sock.fileno())
        if self._pause is not None:
            self._pause.cancel()
            self._pause = None
        self._loop = None

    def close(self) -> None:
        """Stop, close the socket and remove its unix socket file."""
        self.stop()
        self.sock.close()
        if self._unlink is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._unlink)
            self._unlink = None

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("%s: cannot accept a connection: %s", self._name, exc.strerror or exc)
                self._pause_accepting()
                return
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._on_connection(sock)

    def _pause_accepting(self) -> None:
        loop = self._loop
        if loop is None or self._pause is not None:
            return
        fd = self.sock.fileno()
        loop.remove_reader(fd)

        def resume() -> None:
            self._pause = None
            if self._loop is not None:
                self._loop.add_reader(fd, self._accept)

        self._pause = loop.call_later(ACCEPT_PAUSE_S, resume)


def receive(sock: socket.socket, size: int) -> bytes | None:
    """What the kernel holds for a connection, up to ``size`` bytes: None when nothing
    is there yet, ``b""`` once the peer is gone (the end of its stream, or an error)."""
    try:
        return sock.recv(size)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def listen(endpoint: str) -> tuple[socket.socket, str, str | None]:
    """A non-blocking socket listening on ``endpoint``; (it, the endpoint bound, a file to unlink).

    ``tcp://HOST:PORT`` or ``ipc://PATH`` as libzmq binds them (see the module
    docstring); any failure is a :class:`zmq.ZMQError`, as libzmq's bind raised.
    """
    transport, sep, address = endpoint.partition("://")
    try:
        if sep and transport == "tcp":
            family, sockaddr = _tcp_address(address)
            sock = socket.socket(family, socket.SOCK_STREAM)
            # as libzmq: a restarted supervisor binds again at once (TIME_WAIT)
            _bind_listening(sock, sockaddr, reuse_address=True)
            host, port = sock.getsockname()[:2]
            host = f"[{host}]" if family == socket.AF_INET6 else host
            return sock, f"tcp://{host}:{port}", None
        if sep and transport == "ipc" and address:
            abstract = address.startswith("@")
            path = "\0" + address[1:] if abstract else address
            if not abstract:
                _remove_stale_socket(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            _bind_listening(sock, path, reuse_address=False)
            return sock, f"ipc://{address}", None if abstract else path
    except OSError as exc:
        code = exc.errno if exc.errno is not None else errno.EINVAL
        raise zmq.ZMQError(code, exc.strerror or str(exc)) from None
    raise zmq.ZMQError(errno.EPROTONOSUPPORT, f"tcp:// or ipc:// expected, not {endpoint!r}")


def _tcp_address(address: str) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """``HOST:PORT`` of a tcp:// endpoint -> (family, the address to bind)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise OSError(errno.EINVAL, f"tcp://{address}: HOST:PORT expected")
    port = 0 if port_text == "*" else _port(port_text)
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, (host[1:-1], port)
    if host == "*":
        return socket.AF_INET, ("0.0.0.0", port)
    with contextlib.suppress(OSError):
        socket.inet_pton(socket.AF_INET, host)
        return socket.AF_INET, (host, port)
    if host in {name for _, name in socket.if_nameindex()}:
        return socket.AF_INET, (_interface_address(host), port)
    infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    return socket.AF_INET, (str(infos[0][4][0]), port)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise OSError(errno.EINVAL, f"{text!r} is not a port")
    return int(text)


def _interface_address(name: str) -> str:
    """The IPv4 address of network interface ``name`` (libzmq binds ``tcp://eth0:PORT`` so)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("256s", name.encode()[:15])
        answer = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
    return socket.inet_ntoa(answer[20:24])


def _bind_listening(sock: socket.socket, address: Any, *, reuse_address: bool) -> None:
    """Bind ``sock`` to ``address`` and listen, non-blocking; closed if any step fails."""
    try:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise


def _remove_stale_socket(path: str) -> None:
    """A unix socket file left by an earlier run is removed before binding (libzmq does too)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
