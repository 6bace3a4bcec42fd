"""``cluster reshard --shards N|auto``: ask a running cluster to reshard and follow it to the switch.

The request goes to the cluster's control socket (``{"reshard": {"shards": N}}``);
then ``{"reshard": "status"}`` is asked every half second and a line printed
whenever the new set's progress changes, until the switch (exit 0) or a refusal
or abandonment (one line, exit 1). How the switch works: :mod:`cluster.reshard`.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any, Final

import orjson
import typer
import zmq

from cluster.cli_app import CommandFailed, app, client_curve_keys, usage_error
from cluster.config import DEFAULT_CONTROL
from cluster.reshard import describe_progress

#: How long one control request may take.
REQUEST_TIMEOUT_S: Final = 10.0
POLL_S: Final = 0.5


def _ask(endpoint: str, request: dict[str, Any], curve: tuple[bytes, bytes] | None) -> Any:
    from protocol.curvezmq import public_key_of

    context = zmq.Context()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(REQUEST_TIMEOUT_S * 1000))
    if curve is not None:
        server_key, secret_key = curve
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public_key_of(secret_key))
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret_key)
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
                f"{REQUEST_TIMEOUT_S:g} s"
            ) from None
    finally:
        sock.close(0)
        context.term()


@app.command()
def reshard(
    shards: Annotated[
        str, typer.Option(help="The new shard count, or 'auto' (Discord's recommendation).")
    ],
    control: Annotated[
        str,
        typer.Option(envvar="CLUSTER_CONTROL", help="The cluster's control socket."),
    ] = DEFAULT_CONTROL,
    curve_server_key: Annotated[
        str | None,
        typer.Option(
            metavar="FILE", help="CURVE: the cluster's public key file.", show_default=False
        ),
    ] = None,
    curve_secret: Annotated[
        str | None,
        typer.Option(
            metavar="FILE", help="CURVE: this client's secret key file.", show_default=False
        ),
    ] = None,
) -> None:
    """Reshard a running cluster without downtime; print progress until the switch."""

    wanted: int | str
    if shards.strip().lower() == "auto":
        wanted = "auto"
    elif shards.strip().isascii() and shards.strip().isdigit() and int(shards) >= 1:
        wanted = int(shards)
    else:
        usage_error(f"--shards must be a positive integer or 'auto', got {shards[:40]!r}")
    curve = client_curve_keys(curve_server_key, curve_secret)
    reply = _ask(control, {"reshard": {"shards": wanted}}, curve)
    if not reply.get("ok"):
        raise CommandFailed(f"reshard refused: {reply.get('error')}")
    last = ""
    while True:
        progress = reply.get("reshard") or {}
        line = describe_progress(progress) if progress else "no reshard"
        if line != last:
            print(f"cluster reshard: {line}", flush=True)
            last = line
        phase = progress.get("phase")
        if phase == "switched":
            return
        if phase != "starting":
            raise CommandFailed(f"reshard {phase}: {progress.get('error')}")
        time.sleep(POLL_S)
        reply = _ask(control, {"reshard": "status"}, curve)
        if not reply.get("ok"):
            print(f"cluster reshard: {reply.get('error')}", file=sys.stderr)
