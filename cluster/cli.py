"""The ``cluster`` command line (typer): parse, build a frozen config, call the component.

Commands register on :data:`app`; each stays thin. A bad option or value
ends with one line on stderr (``cluster: error: ...``) and exit status 2;
a runtime failure (e.g. the port is taken) with one line and status 1.
``main`` is the console-script entry point.

Adding a command::

    @app.command()
    def up(...) -> None:
        config = build_config(...)          # ValueError -> usage_error(str(exc))
        run_async(supervisor.run(config))   # uvloop when available
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine
from typing import Annotated, Any, NoReturn

import typer
from typer._click import exceptions as click_exceptions

from simulator import Simulator, SimulatorConfig

app = typer.Typer(
    name="cluster",
    help="Titanium Cluster: a Discord Gateway cluster and its local Discord simulator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CommandFailed(Exception):
    """A command failed at run time; the message is the one line printed."""


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


# -- cluster simulate -----------------------------------------------------------------------


@app.command()
def simulate(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8900,
    token: Annotated[
        str, typer.Option(help="The one bot token accepted.", show_default=False)
    ] = "simulated-token",
    shards: Annotated[int, typer.Option(help="Recommended shard count in /gateway/bot.")] = 1,
    max_concurrency: Annotated[int, typer.Option(help="Identify buckets (max_concurrency).")] = 1,
    guilds: Annotated[
        int | None, typer.Option(help="Total guilds, spread over shards [default: 4 per shard].")
    ] = None,
    event_rate: Annotated[float, typer.Option(help="Dispatches per second per shard.")] = 0.0,
    heartbeat_interval: Annotated[
        int, typer.Option(help="Heartbeat interval in Hello, in ms.")
    ] = 41250,
    identify_window: Annotated[
        float, typer.Option(help="Seconds per identify bucket (Discord: 5).")
    ] = 5.0,
    chaos: Annotated[float, typer.Option(help="Random faults per second per connection.")] = 0.0,
    chaos_seed: Annotated[int, typer.Option(help="Seed of the chaos mode.")] = 0,
) -> None:
    """Run the Discord simulator alone (REST + gateway) until SIGINT or SIGTERM."""
    try:
        config = SimulatorConfig(
            host=host,
            port=port,
            token=token,
            shards=shards,
            max_concurrency=max_concurrency,
            guilds=guilds,
            event_rate=event_rate,
            heartbeat_interval_ms=heartbeat_interval,
            identify_window_s=identify_window,
            chaos_rate=chaos,
            chaos_seed=chaos_seed,
        )
    except ValueError as exc:
        usage_error(str(exc))
    run_async(_simulate(config))


async def _simulate(config: SimulatorConfig) -> None:
    sim = Simulator(config)
    try:
        await sim.start()
    except OSError as exc:
        raise CommandFailed(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}"
        ) from None
    try:
        print(f"simulator listening on {sim.base_url}", flush=True)
        print(f"REST:    {sim.rest_url}", flush=True)
        print(f"gateway: {sim.gateway_url}", flush=True)
        print(f"admin:   {sim.admin_url}", flush=True)
        print(
            f"shards={config.shards} max_concurrency={config.max_concurrency} "
            f"guilds={config.guild_count} event_rate={config.event_rate}/s; Ctrl-C to stop",
            flush=True,
        )
        signum = await wait_for_signal(signal.SIGINT, signal.SIGTERM)
        print(f"{signum.name}: stopping", flush=True)
    finally:
        await sim.stop()


# -- entry point ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one-line errors, meaningful exit codes."""
    command = typer.main.get_command(app)
    try:
        result = command.main(
            args=sys.argv[1:] if argv is None else argv, prog_name="cluster", standalone_mode=False
        )
    except click_exceptions.NoArgsIsHelpError:
        sys.exit(EXIT_USAGE)  # the help was printed
    except click_exceptions.UsageError as exc:
        message = " ".join(exc.format_message().split())
        print(f"cluster: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except click_exceptions.ClickException as exc:
        print(f"cluster: error: {' '.join(exc.format_message().split())}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except CommandFailed as exc:
        print(f"cluster: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()


# Commands that live in their own modules register on ``app`` when imported.
from cluster import cli_client  # noqa: E402, F401
