"""``cluster reshard --shards N|auto``: ask a running cluster to reshard and follow it to the switch.

The request goes to the cluster's control socket (``{"reshard": {"shards": N}}``);
then ``{"reshard": "status"}`` is asked every half second and a line printed
whenever the new set's progress changes, until the switch (exit 0) or a refusal
or abandonment (one line, exit 1). How the switch works: :mod:`cluster.reshard`.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated, Final

import typer

from cluster.cli_app import (
    CommandFailed,
    CurveSecretOption,
    CurveServerKeyOption,
    app,
    client_curve_keys,
    control_request,
    usage_error,
)
from cluster.config import DEFAULT_CONTROL
from cluster.reshard import describe_progress

POLL_S: Final = 0.5


@app.command()
def reshard(
    shards: Annotated[
        str, typer.Option(help="The new shard count, or 'auto' (Discord's recommendation).")
    ],
    control: Annotated[
        str,
        typer.Option(envvar="CLUSTER_CONTROL", help="The cluster's control socket."),
    ] = DEFAULT_CONTROL,
    curve_server_key: CurveServerKeyOption = None,
    curve_secret: CurveSecretOption = None,
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
    reply = control_request(control, {"reshard": {"shards": wanted}}, curve)
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
        reply = control_request(control, {"reshard": "status"}, curve)
        if not reply.get("ok"):
            print(f"cluster reshard: {reply.get('error')}", file=sys.stderr)
