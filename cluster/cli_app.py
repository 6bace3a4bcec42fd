"""The ``cluster`` typer app and what every command shares: one-line failures, the event
loop, one request to a running cluster's control socket.

:mod:`cluster.cli` (``simulate``, ``up``, ``config``, ``keys``, the entry point) and
:mod:`cluster.cli_client` (``status``, ``tail``) both register their commands on
:data:`app`; neither imports the other's internals, so the two command modules form
no cycle (``cluster.cli`` imports ``cluster.cli_client`` once, to register it).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Annotated, Any, Final, NoReturn

import orjson
import typer
import zmq
from typer._click import exceptions as click_exceptions

from protocol.exitcodes import ExitCode

app = typer.Typer(
    name="cluster",
    help="Titanium Cluster: a Discord Gateway cluster and its local Discord simulator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


#: How long one control request may take.
CONTROL_TIMEOUT_S: Final = 10.0


class CommandFailed(Exception):
    """A command failed at run time; the message is the one line printed.

    ``exit_code``: CRASH (1) for a failure a retry may fix, FATAL (78) when it cannot
    (a fatal gateway close code: the token, the shard count, the intents).
    """

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.CRASH) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@app.callback()
def _root() -> None:
    """Titanium Cluster: a Discord Gateway cluster and its local Discord simulator."""


def usage_error(message: str) -> NoReturn:
    raise click_exceptions.UsageError(message)


def run_async(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


#: ``--curve-server-key FILE`` of a client command (read by :func:`client_curve_keys`).
CurveServerKeyOption = Annotated[
    str | None,
    typer.Option(
        metavar="FILE",
        help="CURVE (a cluster off loopback): the cluster's public key file (server.key).",
        show_default=False,
    ),
]
#: ``--curve-secret FILE`` of a client command (read by :func:`client_curve_keys`).
CurveSecretOption = Annotated[
    str | None,
    typer.Option(
        metavar="FILE",
        help="CURVE: this client's secret key file (`cluster keys --name NAME` makes "
        "NAME.key_secret; the cluster must list NAME.key in its --curve-clients).",
        show_default=False,
    ),
]


def use_client_curve(sock: zmq.Socket[bytes], curve: tuple[bytes, bytes] | None) -> None:
    """Make ``sock`` a CURVE client of the server key with this client's secret key (from
    :func:`client_curve_keys`); nothing when ``curve`` is None. Before ``connect``."""
    if curve is None:
        return
    from protocol.curvezmq import public_key_of

    server_key, secret_key = curve
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public_key_of(secret_key))
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret_key)


def client_curve_keys(
    server_key_file: str | None, secret_file: str | None
) -> tuple[bytes, bytes] | None:
    """``--curve-server-key FILE --curve-secret FILE`` of a client command: (server public
    key, this client's secret key), None without them; a usage error for one alone or a
    bad file."""
    from cluster.curve import load_single_key

    if (server_key_file is None) != (secret_file is None):
        usage_error("--curve-server-key and --curve-secret go together")
    if server_key_file is None or secret_file is None:
        return None
    try:
        return (
            load_single_key(server_key_file, "--curve-server-key"),
            load_single_key(secret_file, "--curve-secret"),
        )
    except ValueError as exc:
        usage_error(str(exc))


def control_request(
    endpoint: str, request: dict[str, Any], curve: tuple[bytes, bytes] | None
) -> Any:
    """One request to a cluster's control socket and its JSON reply (CURVE when ``curve``)."""
    context = zmq.Context()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(CONTROL_TIMEOUT_S * 1000))
    use_client_curve(sock, curve)
    try:
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            usage_error(f"--control {endpoint!r} is not a ZeroMQ endpoint ({exc})")
        sock.send(orjson.dumps(request))
        try:
            return orjson.loads(sock.recv())
        except zmq.Again:
            raise CommandFailed(
                f"no answer from the cluster's control socket {endpoint} within "
                f"{CONTROL_TIMEOUT_S:g} s"
            ) from None
    finally:
        sock.close(0)
        context.term()


async def wait_for_signal(*signums: signal.Signals) -> signal.Signals:
    """Wait until one of ``signums`` arrives; the handler only sets a future (one owner)."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()

    def handler(signum: signal.Signals) -> None:
        if not received.done():
            received.set_result(signum)

    for signum in signums:
        loop.add_signal_handler(signum, handler, signum)
    try:
        return await received
    finally:
        for signum in signums:
            loop.remove_signal_handler(signum)
