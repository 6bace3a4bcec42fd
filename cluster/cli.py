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
import contextlib
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer._click import exceptions as click_exceptions

from cluster.config import (
    DEFAULT_API_URL,
    DEFAULT_CONTROL,
    DEFAULT_HEALTH,
    DEFAULT_PUB,
    DEFAULT_STATE_DIR,
    SIMULATED_TOKEN,
)

if TYPE_CHECKING:
    from cluster.config import SupervisorConfig
    from simulator import SimulatorConfig

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
    from simulator import SimulatorConfig  # imported here: status and tail start faster

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
    from simulator import Simulator

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


# -- cluster up -----------------------------------------------------------------------------


@app.command()
def up(
    token: Annotated[
        str | None,
        typer.Option(
            envvar="DISCORD_TOKEN",
            help="Bot token; required unless --simulate.",
            show_default=False,
        ),
    ] = None,
    shards: Annotated[
        str, typer.Option(help="Total shard count, or 'auto' (Discord's recommendation).")
    ] = "auto",
    shard_ids: Annotated[
        str | None,
        typer.Option(
            "--shard-ids", help="Inclusive range A-B this supervisor runs.", show_default="all"
        ),
    ] = None,
    workers: Annotated[
        str | None, typer.Option(help="Worker processes.", show_default="auto")
    ] = None,
    intents: Annotated[
        str | None,
        typer.Option(
            help="Integer or comma-separated names (GUILDS,GUILD_MESSAGES).",
            show_default="non-privileged",
        ),
    ] = None,
    api_url: Annotated[
        str,
        typer.Option(envvar="CLUSTER_API_URL", help="REST base; /gateway/bot is fetched from it."),
    ] = DEFAULT_API_URL,
    compress: Annotated[
        str, typer.Option(help="zlib-stream, zstd-stream or none.")
    ] = "zlib-stream",
    pub: Annotated[
        str, typer.Option(envvar="CLUSTER_PUB", help="Where events are published.")
    ] = DEFAULT_PUB,
    control: Annotated[
        str, typer.Option(envvar="CLUSTER_CONTROL", help="Where commands are accepted.")
    ] = DEFAULT_CONTROL,
    coordinator: Annotated[
        str | None,
        typer.Option(
            help="Endpoint of an external `cluster coordinator`.", show_default="embedded"
        ),
    ] = None,
    health: Annotated[
        str, typer.Option(envvar="CLUSTER_HEALTH", help="host:port of the HTTP endpoint.")
    ] = DEFAULT_HEALTH,
    state_dir: Annotated[
        str,
        typer.Option(envvar="CLUSTER_STATE_DIR", help="Sessions saved for resume after restart."),
    ] = DEFAULT_STATE_DIR,
    identify_interval: Annotated[
        float,
        typer.Option(
            help="Seconds between identifies in one bucket (lower it only for a simulator)."
        ),
    ] = 5.0,
    simulate: Annotated[
        bool,
        typer.Option(
            "--simulate", help="Start the built-in simulator on loopback and connect to it."
        ),
    ] = False,
    log_format: Annotated[str, typer.Option(help="text or json.")] = "text",
    # Hidden knobs for tests and tuning.
    log_level: Annotated[str, typer.Option(hidden=True)] = "INFO",
    report_interval: Annotated[float, typer.Option(hidden=True)] = 1.0,
    identify_margin: Annotated[float | None, typer.Option(hidden=True)] = None,
    liveness_intervals: Annotated[int, typer.Option(hidden=True)] = 10,
    pub_hwm: Annotated[int, typer.Option(hidden=True)] = 10_000,
    stop_timeout: Annotated[float, typer.Option(hidden=True)] = 7.0,
    limit_refresh: Annotated[float, typer.Option(hidden=True)] = 600.0,
    max_quick_deaths: Annotated[int, typer.Option(hidden=True)] = 5,
    simulate_shards: Annotated[int, typer.Option(hidden=True)] = 4,
    simulate_max_concurrency: Annotated[int, typer.Option(hidden=True)] = 4,
    simulate_event_rate: Annotated[float, typer.Option(hidden=True)] = 5.0,
) -> None:
    """Run a cluster (supervisor + workers) in the foreground until SIGINT or SIGTERM."""
    from cluster.config import (
        ConfigError,
        SimulateSettings,
        SupervisorConfig,
        parse_compression,
        parse_health,
        parse_intent_option,
        parse_log_format,
        parse_range,
        parse_shards,
        parse_workers,
    )
    from cluster.restart_policy import RestartPolicy

    try:
        if simulate:
            token = token or SIMULATED_TOKEN
        elif not token:
            raise ConfigError("--token (or DISCORD_TOKEN) is required unless --simulate")
        health_host, health_port = parse_health(health)
        if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("--log-level must be DEBUG, INFO, WARNING or ERROR")
        config = SupervisorConfig(
            token=token,
            shards=parse_shards(shards),
            shard_range=parse_range(shard_ids),
            workers=parse_workers(workers),
            intents=parse_intent_option(intents),
            api_url=api_url,
            compression=parse_compression(compress),
            pub=pub,
            control=control,
            coordinator=coordinator,
            health_host=health_host,
            health_port=health_port,
            state_dir=Path(state_dir),
            identify_interval_s=identify_interval,
            identify_margin_s=identify_margin,
            simulate=SimulateSettings(
                simulate_shards, simulate_max_concurrency, simulate_event_rate
            )
            if simulate
            else None,
            log_format=parse_log_format(log_format),
            log_level=log_level.upper(),
            report_interval_s=report_interval,
            liveness_intervals=liveness_intervals,
            pub_hwm=pub_hwm,
            stop_timeout_s=stop_timeout,
            limit_refresh_s=limit_refresh,
            restart_policy=RestartPolicy(max_quick_deaths=max_quick_deaths),
        )
    except ConfigError as exc:
        usage_error(str(exc))
    run_async(_up(config))


async def _up(config: SupervisorConfig) -> None:
    from cluster import logging_setup
    from cluster.supervisor import Supervisor, SupervisorError

    logging_setup.configure(config.log_format, config.log_level, config.token)
    try:
        await Supervisor(config).run()
    except SupervisorError as exc:
        raise CommandFailed(str(exc)) from None


# -- cluster coordinator ------------------------------------------------------------------------


@app.command(name="coordinator")
def coordinator_command(
    bind: Annotated[
        str, typer.Option(help="Endpoint to bind (tcp://HOST:PORT or ipc://PATH).")
    ] = "tcp://127.0.0.1:5557",
    max_concurrency: Annotated[
        int | None,
        typer.Option(help="Identify buckets.", show_default="from /gateway/bot with --token"),
    ] = None,
    identify_interval: Annotated[
        float, typer.Option(help="Seconds between identifies in one bucket.")
    ] = 5.0,
    session_total: Annotated[int | None, typer.Option(help="Session starts per window.")] = None,
    session_remaining: Annotated[int | None, typer.Option(help="Session starts left now.")] = None,
    reset_after: Annotated[
        float | None, typer.Option(help="Seconds until the budget resets.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="DISCORD_TOKEN",
            help="Fetch the numbers from /gateway/bot with this token.",
            show_default=False,
        ),
    ] = None,
    api_url: Annotated[
        str, typer.Option(envvar="CLUSTER_API_URL", help="REST base.")
    ] = DEFAULT_API_URL,
) -> None:
    """Run an identify coordinator alone, shared by several `cluster up --coordinator` hosts."""
    from cluster.config import ConfigError, check_endpoint

    try:
        check_endpoint("--bind", bind)
        if not identify_interval > 0:
            raise ConfigError("--identify-interval must be > 0")
        given = (max_concurrency, session_total, session_remaining, reset_after)
        if token is None and None in given:
            raise ConfigError(
                "give --max-concurrency, --session-total, --session-remaining and --reset-after, "
                "or --token to fetch them from /gateway/bot"
            )
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigError("--max-concurrency must be at least 1")
        for name, value in (
            ("--session-total", session_total),
            ("--session-remaining", session_remaining),
            ("--reset-after", reset_after),
        ):
            if value is not None and value < 0:
                raise ConfigError(f"{name} must not be negative")
    except ConfigError as exc:
        usage_error(str(exc))
    run_async(
        _coordinator(
            bind,
            max_concurrency,
            identify_interval,
            session_total,
            session_remaining,
            reset_after,
            token,
            api_url,
        )
    )


async def _coordinator(
    bind: str,
    max_concurrency: int | None,
    interval: float,
    total: int | None,
    remaining: int | None,
    reset_after: float | None,
    token: str | None,
    api_url: str,
) -> None:
    import logging

    import zmq

    from cluster.coordinator import run_coordinator
    from cluster.discord_api import DiscordApiError, fetch_gateway_bot

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if token is not None:
        try:
            limit = (await fetch_gateway_bot(api_url, token)).session_start_limit
        except DiscordApiError as exc:
            raise CommandFailed(str(exc)) from None
        max_concurrency = limit.max_concurrency if max_concurrency is None else max_concurrency
        total = limit.total if total is None else total
        remaining = limit.remaining if remaining is None else remaining
        reset_after = limit.reset_after_s if reset_after is None else reset_after
    assert max_concurrency is not None and total is not None
    assert remaining is not None and reset_after is not None
    serving = asyncio.create_task(
        run_coordinator(bind, max_concurrency, interval, total, remaining, reset_after)
    )
    stopping = asyncio.create_task(wait_for_signal(signal.SIGINT, signal.SIGTERM))
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if serving.done() and not serving.cancelled():
            error = serving.exception()
            if isinstance(error, zmq.ZMQError):
                raise CommandFailed(f"cannot bind {bind}: {error.strerror}")
            if error is not None:
                raise CommandFailed(f"the coordinator stopped: {error}")
    finally:
        for task in (serving, stopping):
            task.cancel()
        for task in (serving, stopping):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


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


# Commands that live in their own modules register on ``app`` when imported.
from cluster import cli_client  # noqa: E402, F401
