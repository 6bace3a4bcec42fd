"""CURVE off loopback: key files, the loopback rule, the control socket's ZAP handler.

What ``cluster up`` needs around :mod:`protocol.curvezmq` (the pure part):

- **key files** (``cluster keys`` writes them): ``NAME.key`` holds a public key,
  ``NAME.key_secret`` (mode 0600) the secret key, each one Z85 line after a
  ``#`` comment. ``--curve-secret FILE`` is the server's secret key file (the
  public key is derived from it); ``--curve-clients FILE|DIR`` the client
  public keys allowed in, one per line in a file, or the ``*.key`` files of a
  directory (``NAME.key_secret`` files there are never read as allowed keys).
- **the loopback rule**: :func:`is_loopback_endpoint` and :func:`is_loopback_host`
  decide, from the text alone (no name lookups), whether ``--pub``/``--control``
  and ``--health`` stay on this machine: 127.0.0.0/8, ::1, ``localhost``,
  ``ipc://`` and ``inproc://``. Anything else (``*``, ``0.0.0.0``, an interface
  name, another host name) needs CURVE and an HTTP token.
- **the control socket**: libzmq's own CURVE server (:func:`configure_curve_server`)
  asks a ZAP handler (RFC 27, :class:`ZapHandler` on ``inproc://zeromq.zap.01``
  of the socket's context) about each client key; :func:`zap_reply` is its pure
  decision. ``ZAP_ENFORCE_DOMAIN`` makes a missing handler a refusal, never an
  open door.

Secret keys never appear in a log line, an error or ``/status``; errors name the
file and the line, never its content.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Final

import zmq
import zmq.asyncio

from protocol.curvezmq import (
    KEY_BYTES,
    CurveKeyError,
    CurveServerKeys,
    encode_key,
    new_key_pair,
    parse_key_lines,
)

log = logging.getLogger(__name__)

#: Where libzmq asks its ZAP questions (RFC 27), per context.
ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
#: The ZAP domain of the control socket.
ZAP_DOMAIN: Final = b"titanium-control"
#: A refused client is logged as a warning at most this often.
DENIAL_LOG_S: Final = 10.0
PUBLIC_SUFFIX: Final = ".key"
SECRET_SUFFIX: Final = ".key_secret"
#: Largest key file read (a key is 40 characters; a list of thousands fits).
MAX_KEY_FILE_BYTES: Final = 1024 * 1024

#: The one line ``cluster up`` ends with for a non-loopback --pub/--control without CURVE.
NEEDS_CURVE: Final = (
    "{option} {endpoint} is not on loopback: off loopback --pub and --control need CURVE; "
    "create keys with `cluster keys --out DIR` (the server's) and `cluster keys --out DIR "
    "--name CLIENT` (one per client), then pass --curve-secret DIR/server.key_secret "
    "--curve-clients DIR"
)
#: The one line for a non-loopback --health without a token.
NEEDS_TOKEN: Final = (
    "--health {host}:{port} is not on loopback: off loopback /status, /metrics and the status "
    "page need a bearer token; write a random token to a file (e.g. `head -c 32 /dev/urandom "
    "| base64 > FILE`, mode 0600) and pass --http-token-file FILE"
)


class SecretFileError(ValueError):
    """A secret file (``--http-token-file``) cannot be used; the message never holds its content."""


# -- the loopback rule ------------------------------------------------------------------------


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (also as ``[::1]`` or IPv4-mapped) and ``localhost``."""
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name.lower() in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_loopback_endpoint(endpoint: str) -> bool:
    """True when a ZeroMQ endpoint to bind stays on this machine (loopback tcp, ipc, inproc)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host, sep, port = endpoint[len("tcp://") :].rpartition(":")
    if not sep or not port:
        return False
    return is_loopback_host(host)


# -- key files ----------------------------------------------------------------------------------


def _read_key_file(path: Path, what: str) -> str:
    try:
        if path.stat().st_size > MAX_KEY_FILE_BYTES:
            raise CurveKeyError(f"{what} {path} is over {MAX_KEY_FILE_BYTES} bytes: not a key file")
        return path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise CurveKeyError(f"{what} {path} is not ASCII text: not a Z85 key file") from None
    except OSError as exc:
        raise CurveKeyError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def load_single_key(path: str | Path, what: str) -> bytes:
    """The one key of a key file (``NAME.key`` or ``NAME.key_secret``)."""
    file = Path(path)
    text = _read_key_file(file, what)
    try:
        keys = parse_key_lines(text)
    except CurveKeyError as exc:
        raise CurveKeyError(f"{what} {file}: {exc}") from None
    if len(keys) != 1:
        raise CurveKeyError(f"{what} {file} must hold exactly one Z85 key, it holds {len(keys)}")
    return keys[0]


def load_client_keys(path: str | Path) -> frozenset[bytes]:
    """``--curve-clients``: a file of keys (one per line) or a directory of key files."""
    root = Path(path)
    if root.is_dir():
        # only NAME.key files: secret keys (NAME.key_secret), tokens and notes may sit beside them
        files = sorted(
            p
            for p in root.iterdir()
            if p.is_file() and p.name.endswith(PUBLIC_SUFFIX) and not p.name.startswith(".")
        )
    else:
        files = [root]
    keys: set[bytes] = set()
    for file in files:
        text = _read_key_file(file, "client key file")
        try:
            keys.update(parse_key_lines(text))
        except CurveKeyError as exc:
            raise CurveKeyError(f"client key file {file}: {exc}") from None
    if not keys:
        raise CurveKeyError(
            f"--curve-clients {root}: no client keys (a file with one Z85 public key per "
            "line, or a directory of NAME.key files as `cluster keys` writes them)"
        )
    return frozenset(keys)


def load_server_keys(secret_file: str | Path, clients: str | Path) -> CurveServerKeys:
    """``--curve-secret FILE --curve-clients FILE|DIR`` -> the server's keys."""
    secret = load_single_key(secret_file, "--curve-secret")
    return CurveServerKeys(secret, load_client_keys(clients))


def write_key_pair(out_dir: str | Path, name: str) -> tuple[Path, Path, bytes]:
    """Write ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (secret, 0600) into ``out_dir``.

    Returns (public path, secret path, public key). Existing files are never
    overwritten (CurveKeyError).
    """
    if not name or "/" in name or name.startswith(".") or name != name.strip():
        raise CurveKeyError(f"--name must be a plain file name, got {name!r}")
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    public_path = directory / f"{name}{PUBLIC_SUFFIX}"
    secret_path = directory / f"{name}{SECRET_SUFFIX}"
    for path in (public_path, secret_path):
        if path.exists():
            raise CurveKeyError(f"{path} exists; remove it or choose another --name or --out")
    public, secret = new_key_pair()
    _write_new(
        secret_path,
        "# Titanium Cluster CURVE secret key (Z85). Keep it secret: never share or log it.\n"
        f"{encode_key(secret)}\n",
        0o600,
    )
    _write_new(
        public_path, f"# Titanium Cluster CURVE public key (Z85)\n{encode_key(public)}\n", 0o644
    )
    return public_path, secret_path, public


def _write_new(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def load_http_token(path: str | Path) -> str:
    """``--http-token-file``: the bearer token, its surrounding whitespace stripped."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise SecretFileError(f"cannot read --http-token-file {file}: {why}") from None
    token = text.strip()
    if len(token) < 16 or any(c.isspace() or not c.isprintable() for c in token):
        raise SecretFileError(
            f"--http-token-file {file} must hold one token of at least 16 printable "
            "characters without spaces"
        )
    return token


# -- the control socket -------------------------------------------------------------------------


def configure_curve_server(sock: zmq.Socket[Any], keys: CurveServerKeys) -> None:
    """libzmq's CURVE server on ``sock`` (before bind), every client key asked of ZAP."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret_key)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    # Without a ZAP handler libzmq would admit every key; with this it refuses them all.
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def zap_reply(
    frames: Sequence[bytes], allowed: Collection[bytes], domain: bytes = ZAP_DOMAIN
) -> list[bytes]:
    """RFC 27: a ZAP request (frames after the envelope) -> the reply frames.

    200 for a CURVE client whose public key is allowed (its Z85 key is the user
    id), 400 for any other key, mechanism or domain, 500 for a malformed request.
    """
    if len(frames) < 6 or frames[0] != b"1.0":
        request_id = frames[1] if len(frames) > 1 else b""
        return [b"1.0", request_id, b"500", b"malformed ZAP request", b"", b""]
    request_id, request_domain, mechanism = frames[1], frames[2], frames[5]
    credentials = frames[6:]
    if request_domain != domain:
        return [b"1.0", request_id, b"400", b"unknown ZAP domain", b"", b""]
    if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != KEY_BYTES:
        return [b"1.0", request_id, b"400", b"CURVE only", b"", b""]
    key = credentials[0]
    if key not in allowed:
        return [b"1.0", request_id, b"400", b"client key not allowed", b"", b""]
    return [b"1.0", request_id, b"200", b"OK", encode_key(key).encode("ascii"), b""]


class ZapHandler:
    """Answers libzmq's ZAP requests in one context, from the event loop (no thread, no task).

    A ROUTER bound on :data:`ZAP_ENDPOINT` of ``context``, read whenever its
    ZeroMQ descriptor signals (``loop.add_reader``), drained at each wake-up.
    Only one handler can be bound per context; :meth:`close` unbinds at once so a
    new one may follow.
    """

    def __init__(self, context: zmq.asyncio.Context | zmq.Context[zmq.Socket[bytes]]) -> None:
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.shadow(context.underlying)
        self._allowed: frozenset[bytes] = frozenset()
        self._socket: zmq.Socket[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self.admitted = 0
        self.denied = 0
        self._denial_logged_at = -DENIAL_LOG_S

    def start(self, allowed: Collection[bytes], loop: asyncio.AbstractEventLoop) -> None:
        if self._socket is not None:
            raise RuntimeError("the ZAP handler is already started")
        self._allowed = frozenset(allowed)
        sock: zmq.Socket[bytes] = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        fd = sock.getsockopt(zmq.FD)
        assert isinstance(fd, int)
        self._socket = sock
        self._loop = loop
        self._fd = fd
        loop.add_reader(fd, self._drain)
        self._drain()  # edge-triggered: anything already queued would never signal

    def _drain(self) -> None:
        sock = self._socket
        if sock is None:
            return
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            # [routing id, b"", request...]: libzmq asks as a REQ would
            split = 2 if len(frames) > 1 and not frames[1] else 1
            envelope, request = frames[:split], frames[split:]
            reply = zap_reply(request, self._allowed)
            if reply[2] == b"200":
                self.admitted += 1
            else:
                self._denied(reply[3].decode("ascii"))
            with contextlib.suppress(zmq.ZMQError):  # that handshake is gone already
                sock.send_multipart([*envelope, *reply], zmq.NOBLOCK)

    def _denied(self, why: str) -> None:
        self.denied += 1
        now = time.monotonic()
        if now - self._denial_logged_at >= DENIAL_LOG_S:
            self._denial_logged_at = now
            log.warning("control socket: refused a client (%s); %d so far", why, self.denied)

    def close(self) -> None:
        sock, self._socket = self._socket, None
        if sock is None:
            return
        loop = self._loop
        if loop is not None and self._fd is not None and not loop.is_closed():
            loop.remove_reader(self._fd)
        self._loop = self._fd = None
        with contextlib.suppress(zmq.ZMQError):
            sock.unbind(ZAP_ENDPOINT)  # at once: a close unbinds only when libzmq reaps it
        sock.close(linger=0)
