"""Listening sockets bound as libzmq binds them, for the endpoints the cluster serves
itself with ZMTP on its event loop (``--pub``: cluster/publisher.py; the workers'
channel: cluster/channel.py).

``tcp://HOST:PORT`` (an IPv4 address, ``[IPv6]``, ``*``, a host name or an
interface name; port ``*`` or 0: any) and ``ipc://PATH`` (``ipc://@name``:
Linux's abstract namespace); a bind that fails raises :class:`zmq.ZMQError`, as
libzmq's did, so callers report it the same way.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import struct
from typing import Any, Final

import zmq

#: Pending connections a listening socket keeps (libzmq's ZMQ_BACKLOG default).
LISTEN_BACKLOG: Final = 100
#: ioctl asking an interface's IPv4 address (linux/sockios.h), for ``tcp://eth0:PORT``
_SIOCGIFADDR: Final = 0x8915


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
