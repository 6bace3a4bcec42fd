"""``cluster presence --status S [--activity A]``: change every shard's presence at run time.

One op 3 Update Presence with ``"all": true`` to each ``--control`` socket given (one
per host: a supervisor's control socket reaches the shards it runs). Each shard also
keeps it for its later IDENTIFYs (a new session), so the change survives reconnects
until the cluster restarts with its own ``--status``/``--activity``.
"""

from __future__ import annotations

from typing import Annotated

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
from cluster.config import DEFAULT_CONTROL, ConfigError, parse_presence


@app.command()
def presence(
    status: Annotated[
        str, typer.Option(help="online, idle, dnd or invisible.", show_default=False)
    ] = "online",
    activity: Annotated[
        str | None,
        typer.Option(
            help="playing|listening|watching|competing:NAME or custom:TEXT (none: no activity).",
            show_default=False,
        ),
    ] = None,
    control: Annotated[
        list[str] | None,
        typer.Option(
            envvar="CLUSTER_CONTROL",
            help="A host's control socket; repeat it for every host of the cluster.",
            show_default=False,
        ),
    ] = None,
    curve_server_key: CurveServerKeyOption = None,
    curve_secret: CurveSecretOption = None,
) -> None:
    """Set every shard's presence (op 3) on the running cluster; kept for later IDENTIFYs."""
    try:
        d = parse_presence(status, activity)
    except ConfigError as exc:
        usage_error(str(exc))
    curve = client_curve_keys(curve_server_key, curve_secret)
    endpoints = control or [DEFAULT_CONTROL]
    failed: list[str] = []
    for endpoint in endpoints:
        reply = control_request(endpoint, {"op": 3, "d": d, "all": True}, curve)
        if reply.get("ok"):
            shard_ids = reply.get("shard_ids") or []
            print(f"cluster presence: {endpoint}: {len(shard_ids)} shards", flush=True)
        else:
            failed.append(f"{endpoint}: {reply.get('error')}")
    if failed:
        raise CommandFailed("presence refused: " + "; ".join(failed))
