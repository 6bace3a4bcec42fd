"""The ``cluster`` command line (typer): parse, build a frozen config, call the component.

Commands register on :data:`cluster.cli_app.app` (shared with
:mod:`cluster.cli_client`, which this module imports once to register
``status`` and ``tail``); each stays thin. A bad option or value
ends with one line on stderr (``cluster: error: ...``) and exit status 2;
a runtime failure (e.g. the port is taken) with one line and status 1.
``main`` is the console-script entry point.

Every option of ``cluster up`` also comes from ``CLUSTER_<NAME>`` and from ``--config
FILE`` (flag > environment > file > default; ``cluster.config_file``); ``cluster config``
takes the same options and prints what takes effect. An error line names the variable
or the file key a bad value came from.

Adding a command: parse the options into a frozen config (``cluster.config``;
a :class:`cluster.config.ConfigError` becomes ``usage_error(str(exc))``), then
``run_async(component(config))``, which runs the coroutine on uvloop when available.
"""

from __future__ import annotations

import inspect
import os
import signal
import sys
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer
from typer._click import exceptions as click_exceptions
from typer._click.core import Context, ParameterSource

from cluster import cli_client, cli_presence, cli_reshard  # noqa: F401 (register their commands)
from cluster.cli_app import CommandFailed, app, run_async, usage_error, wait_for_signal
from cluster.config import (
    DEFAULT_API_URL,
    DEFAULT_CONTROL,
    DEFAULT_HEALTH,
    DEFAULT_PUB,
    DEFAULT_PUB_HWM,
    DEFAULT_STATE_DIR,
    SIMULATED_TOKEN,
)
from cluster.config_file import (
    ConfigFile,
    ConfigFileError,
    OptionSpec,
    Setting,
    Source,
    envvar_in_use,
    kind_of,
    load_config_file,
    render_json,
    render_toml,
    with_origin,
)
from protocol.exitcodes import ExitCode

if TYPE_CHECKING:
    from cluster.config import SupervisorConfig
    from protocol.curvezmq import CurveServerKeys
    from simulator import SimulatorConfig

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
    privileged_intents: Annotated[
        str,
        typer.Option(
            help="Privileged intents the simulated application has enabled, as the Developer "
            "Portal toggles would: names (GUILD_MEMBERS,GUILD_PRESENCES,MESSAGE_CONTENT), 'all' "
            "or 'none'. An IDENTIFY asking for one not enabled gets close code 4014.",
        ),
    ] = "none",
    session_start_limit: Annotated[
        int | None,
        typer.Option(
            help="Session starts per day, answered by /gateway/bot and enforced (Discord raises "
            "the 1000 of a new application for large bots).",
            show_default="1000",
        ),
    ] = None,
) -> None:
    """Run the Discord simulator alone (REST + gateway) until SIGINT or SIGTERM."""
    from protocol.gateway import DEFAULT_SESSION_START_LIMIT
    from protocol.intents import parse_privileged_intents
    from simulator import SimulatorConfig  # imported here: status and tail start faster

    try:
        privileged = parse_privileged_intents(privileged_intents)
    except ValueError as exc:
        usage_error(f"--privileged-intents: {exc}")
    if session_start_limit is not None and not 1 <= session_start_limit <= 1 << 31:
        usage_error(
            f"--session-start-limit must be between 1 and {1 << 31}, got {session_start_limit}"
        )
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
            privileged_intents=privileged,
            session_start_total=(
                DEFAULT_SESSION_START_LIMIT if session_start_limit is None else session_start_limit
            ),
        )
    except ValueError as exc:
        usage_error(str(exc))
    run_async(_simulate(config))


async def _simulate(config: SimulatorConfig) -> None:
    from protocol.intents import intent_names
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
            f"guilds={config.guild_count} event_rate={config.event_rate}/s "
            f"session_start_limit={config.session_start_total} "
            f"privileged_intents={','.join(intent_names(config.privileged_intents)) or 'none'}; "
            "Ctrl-C to stop",
            flush=True,
        )
        if config.shards > config.session_start_total:
            print(
                f"note: identifying all {config.shards} shards takes {config.shards} session "
                f"starts, more than the {config.session_start_total} a day allowed; raise it "
                f"with --session-start-limit {config.shards} (Discord does for large bots)",
                flush=True,
            )
        signum = await wait_for_signal(signal.SIGINT, signal.SIGTERM)
        print(f"{signum.name}: stopping", flush=True)
    finally:
        await sim.stop()


# -- settings of cluster up: flag > environment (CLUSTER_<NAME>) > --config FILE > default ---------

#: Every option of ``cluster up`` (and ``cluster config``) is also read from ``CLUSTER_<NAME>``;
#: an explicit ``envvar=`` (``DISCORD_TOKEN``, ``CLUSTER_REDIS``, ...) is read first.
UP_CONTEXT: Final[dict[str, Any]] = {"auto_envvar_prefix": "CLUSTER"}
#: ``ctx.meta`` keys: the checked config file; "check, do not run" (``cluster config``).
_META_FILE: Final = "cluster.config_file"
_META_CHECK_ONLY: Final = "cluster.check_only"
#: Parameters of ``cluster up`` / ``cluster config`` that are not settings.
_NOT_SETTINGS: Final = frozenset({"config_file", "output_format"})
_SOURCES: Final = {
    ParameterSource.COMMANDLINE: Source.FLAG,
    ParameterSource.PROMPT: Source.FLAG,
    ParameterSource.ENVIRONMENT: Source.ENV,
    ParameterSource.DEFAULT_MAP: Source.FILE,
    ParameterSource.DEFAULT: Source.DEFAULT,
}


def _read_config_file(ctx: typer.Context, value: str | None) -> str | None:
    """``--config`` (eager: parsed before the other options): the file becomes the defaults.

    Click then takes each option from the command line, else the environment, else
    ``default_map`` (this file), else the default (``ParameterSource``).
    """
    if value:
        try:
            loaded = load_config_file(value, _option_specs(ctx))
        except ConfigFileError as exc:
            usage_error(str(exc))
        ctx.default_map = {**(ctx.default_map or {}), **loaded.values}
        ctx.meta[_META_FILE] = loaded
    return value


def _option_specs(ctx: Context) -> dict[str, OptionSpec]:
    """The options of ``cluster up`` as settings: name, kind, flag, environment variables."""
    hints = typing.get_type_hints(up)
    specs: dict[str, OptionSpec] = {}
    for param in ctx.command.params:
        name = param.name
        if name is None or name in _NOT_SETTINGS or name not in hints:
            continue
        envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
        if getattr(param, "allow_from_autoenv", False) and ctx.auto_envvar_prefix:
            envvars.append(f"{ctx.auto_envvar_prefix}_{name.upper()}")
        specs[name] = OptionSpec(
            name=name,
            kind=kind_of(hints[name]),
            flag=param.opts[0],
            envvars=tuple(envvars),
            hidden=bool(getattr(param, "hidden", False)),
        )
    return specs


def _settings(ctx: Context) -> list[Setting]:
    """Each option's effective value and where it came from (options not parsed yet: left out)."""
    loaded: ConfigFile | None = ctx.meta.get(_META_FILE)
    settings = []
    for spec in _option_specs(ctx).values():
        parameter_source = ctx.get_parameter_source(spec.name)
        if parameter_source is None:
            continue
        source = _SOURCES[parameter_source]
        origin = None
        if source is Source.ENV:
            origin = envvar_in_use(spec, os.environ)
        elif source is Source.FILE and loaded is not None:
            origin = loaded.origin(spec.name)
        settings.append(Setting(spec, ctx.params.get(spec.name), source, origin))
    return settings


def _origins(ctx: Context | None) -> dict[str, str]:
    """For error lines: option flag -> the variable or file key its value came from."""
    if ctx is None or ctx.command.name not in ("up", "config"):
        return {}
    return {
        s.spec.flag: s.origin
        for s in _settings(ctx)
        if s.source in (Source.ENV, Source.FILE) and s.origin is not None
    }


# -- cluster up -----------------------------------------------------------------------------


@app.command(context_settings=UP_CONTEXT)
def up(
    ctx: typer.Context,
    config_file: Annotated[
        str | None,
        typer.Option(
            "--config",
            envvar="CLUSTER_CONFIG",
            is_eager=True,
            callback=_read_config_file,
            help='TOML file with any option below as a key (shard-ids = "0-15"); a flag or '
            "an environment variable (CLUSTER_<NAME>) wins over the file. See `cluster config`.",
            show_default=False,
        ),
    ] = None,
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
    auto_reshard: Annotated[
        bool,
        typer.Option(
            "--auto-reshard",
            envvar="CLUSTER_AUTO_RESHARD",
            help="Ask Discord (GET /gateway/bot) every hour and, when it recommends more shards "
            "than the cluster runs, reshard to that count without downtime, as `cluster "
            "reshard` does.",
        ),
    ] = False,
    shard_ids: Annotated[
        str | None,
        typer.Option(
            "--shard-ids",
            help="Inclusive range A-B this supervisor runs, or 'auto' (with --hosts and --redis).",
            show_default="all",
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
    redis: Annotated[
        str | None,
        typer.Option(
            envvar="CLUSTER_REDIS",
            help="Shared state for several hosts: redis://HOST:PORT/DB or unix:///PATH.",
            show_default="one host, no Redis",
        ),
    ] = None,
    hosts: Annotated[
        int | None,
        typer.Option(
            envvar="CLUSTER_HOSTS",
            help="With --shard-ids auto: the shards are cut into this many equal ranges.",
            show_default=False,
        ),
    ] = None,
    host_index: Annotated[
        int | None,
        typer.Option(
            envvar="CLUSTER_HOST_INDEX",
            help="With --hosts: which range is ours.",
            show_default="the number ending the host name, else any free range",
        ),
    ] = None,
    identify_reserve: Annotated[
        int, typer.Option(help="With --redis: session starts no grant may spend.")
    ] = 0,
    status: Annotated[
        str | None,
        typer.Option(
            help="Presence at IDENTIFY: online, idle, dnd or invisible.", show_default="online"
        ),
    ] = None,
    activity: Annotated[
        str | None,
        typer.Option(
            help="Activity at IDENTIFY: playing:NAME, listening:NAME, watching:NAME, "
            "competing:NAME or custom:TEXT.",
            show_default=False,
        ),
    ] = None,
    large_threshold: Annotated[
        int | None,
        typer.Option(help="IDENTIFY's large_threshold (50-250).", show_default="50"),
    ] = None,
    sink: Annotated[
        str,
        typer.Option(
            envvar="CLUSTER_SINK",
            help="redis: also append every dispatch to Redis Streams (needs --redis).",
        ),
    ] = "none",
    sink_encoding: Annotated[
        str, typer.Option(help="The sink's data field: msgpack or json.")
    ] = "msgpack",
    sink_retention: Annotated[
        float, typer.Option(help="Seconds the sink keeps entries (MINID trim).")
    ] = 60.0,
    sink_maxlen: Annotated[
        int, typer.Option(help="Entries the sink keeps per stream (MAXLEN trim; 0: no bound).")
    ] = 0,
    coordinator: Annotated[str | None, typer.Option(hidden=True)] = None,
    health: Annotated[
        str, typer.Option(envvar="CLUSTER_HEALTH", help="host:port of the HTTP endpoint.")
    ] = DEFAULT_HEALTH,
    curve_secret: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="CURVE on --pub and --control (required off loopback): the server's secret "
            "key file, as `cluster keys` writes it (NAME.key_secret).",
            show_default=False,
        ),
    ] = None,
    curve_clients: Annotated[
        str | None,
        typer.Option(
            metavar="FILE|DIR",
            help="With --curve-secret: the client public keys let in, one Z85 key per line "
            "(a file), or the NAME.key files of a directory.",
            show_default=False,
        ),
    ] = None,
    http_token_file: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="Bearer token for /status, /metrics and / (required when --health is off "
            "loopback; /health and /livez stay open).",
            show_default=False,
        ),
    ] = None,
    gateway: Annotated[
        str | None,
        typer.Option(
            envvar="CLUSTER_GATEWAY",
            metavar="HOST:PORT",
            help="A Discord-gateway-compatible websocket endpoint for unchanged bot libraries "
            "(discord.py, hikari, discord.js): READY and GUILD_CREATE from the cluster's guild "
            "cache, client RESUME. Off loopback it needs --gateway-token-file.",
            show_default="off",
        ),
    ] = None,
    gateway_token_file: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="With --gateway: a URL-safe token every gateway client must carry as the first "
            "path segment of its URL (ws://HOST:PORT/<token>/); required off loopback.",
            show_default=False,
        ),
    ] = None,
    gateway_member_cap: Annotated[
        int,
        typer.Option(help="With --gateway: members (and presences) cached per guild at most."),
    ] = 5000,
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
    privileged_intents: Annotated[
        str | None,
        typer.Option(
            help="With --simulate: privileged intents the simulated application has enabled "
            "(GUILD_MEMBERS,GUILD_PRESENCES,MESSAGE_CONTENT, 'all' or 'none'). On Discord they "
            "are enabled in the Developer Portal (Bot -> Privileged Gateway Intents).",
            show_default="none",
        ),
    ] = None,
    session_start_limit: Annotated[
        int | None,
        typer.Option(
            help="With --simulate: the simulator's session starts per day (Discord sets the "
            "real one, reported by /gateway/bot).",
            show_default="1000",
        ),
    ] = None,
    log_format: Annotated[str, typer.Option(help="text or json.")] = "text",
    # Hidden knobs for tests and tuning.
    log_level: Annotated[str, typer.Option(hidden=True)] = "INFO",
    report_interval: Annotated[float, typer.Option(hidden=True)] = 1.0,
    identify_margin: Annotated[float | None, typer.Option(hidden=True)] = None,
    liveness_intervals: Annotated[int, typer.Option(hidden=True)] = 10,
    pub_hwm: Annotated[int, typer.Option(hidden=True)] = DEFAULT_PUB_HWM,
    stop_timeout: Annotated[float, typer.Option(hidden=True)] = 7.0,
    limit_refresh: Annotated[float, typer.Option(hidden=True)] = 600.0,
    auto_reshard_interval: Annotated[float, typer.Option(hidden=True)] = 3600.0,
    max_quick_deaths: Annotated[int, typer.Option(hidden=True)] = 5,
    lease_ttl: Annotated[float, typer.Option(hidden=True)] = 10.0,
    lease_renew: Annotated[float, typer.Option(hidden=True)] = 2.0,
    fence_after: Annotated[float, typer.Option(hidden=True)] = 6.0,
    takeover_wait: Annotated[float, typer.Option(hidden=True)] = 1.0,
    checkpoint_interval: Annotated[float, typer.Option(hidden=True)] = 0.5,
    gateway_heartbeat_interval: Annotated[int, typer.Option(hidden=True)] = 41_250,
    gateway_replay_bytes: Annotated[int, typer.Option(hidden=True)] = 8 * 1024 * 1024,
    gateway_resume_window: Annotated[float, typer.Option(hidden=True)] = 120.0,
    gateway_high_water: Annotated[int, typer.Option(hidden=True)] = 4 * 1024 * 1024,
    gateway_cache_save_interval: Annotated[float, typer.Option(hidden=True)] = 30.0,
    simulate_shards: Annotated[int, typer.Option(hidden=True)] = 4,
    simulate_max_concurrency: Annotated[int, typer.Option(hidden=True)] = 4,
    simulate_event_rate: Annotated[float, typer.Option(hidden=True)] = 5.0,
) -> None:
    """Run a cluster (supervisor + workers) in the foreground until SIGINT or SIGTERM."""
    from cluster.config import (
        ConfigError,
        RedisSettings,
        SimulateSettings,
        SupervisorConfig,
        parse_compression,
        parse_gateway_settings,
        parse_health,
        parse_intent_option,
        parse_large_threshold,
        parse_log_format,
        parse_presence,
        parse_range,
        parse_shards,
        parse_sink,
        parse_workers,
    )
    from cluster.restart_policy import RestartPolicy

    try:
        if simulate:
            token = token or SIMULATED_TOKEN
        elif not token:
            raise ConfigError("--token (or DISCORD_TOKEN) is required unless --simulate")
        if coordinator is not None:
            raise ConfigError(
                "--coordinator is retired: hosts sharing a bot share Redis instead "
                "(--redis redis://HOST:6379/0, see the README)"
            )
        auto_range = shard_ids is not None and shard_ids.strip().lower() == "auto"
        if auto_range and (redis is None or hosts is None):
            raise ConfigError("--shard-ids auto needs --hosts H and --redis URL")
        if hosts is not None and not auto_range:
            raise ConfigError("--hosts goes with --shard-ids auto")
        if redis is None and host_index is not None:
            raise ConfigError("--host-index needs --shard-ids auto --hosts H and --redis URL")
        redis_settings = (
            None
            if redis is None
            else RedisSettings(
                url=redis,
                hosts=hosts,
                host_index=host_index,
                ttl_s=lease_ttl,
                renew_s=lease_renew,
                fence_after_s=fence_after,
                takeover_wait_s=takeover_wait,
                identify_reserve=identify_reserve,
            )
        )
        health_host, health_port = parse_health(health)
        curve, http_token = _security_options(curve_secret, curve_clients, http_token_file)
        if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("--log-level must be DEBUG, INFO, WARNING or ERROR")
        config = SupervisorConfig(
            token=token,
            shards=parse_shards(shards),
            shard_range=None if auto_range else parse_range(shard_ids),
            redis=redis_settings,
            sink=parse_sink(sink, redis_settings, sink_encoding, sink_retention, sink_maxlen),
            gateway=parse_gateway_settings(
                gateway,
                gateway_token_file,
                heartbeat_interval_ms=gateway_heartbeat_interval,
                member_cap=gateway_member_cap,
                presence_cap=gateway_member_cap,
                replay_bytes=gateway_replay_bytes,
                resume_window_s=gateway_resume_window,
                write_high_water=gateway_high_water,
                cache_save_interval_s=gateway_cache_save_interval,
            ),
            presence=parse_presence(status, activity),
            large_threshold=parse_large_threshold(large_threshold),
            workers=parse_workers(workers),
            intents=parse_intent_option(intents),
            api_url=api_url,
            compression=parse_compression(compress),
            pub=pub,
            control=control,
            health_host=health_host,
            health_port=health_port,
            curve=curve,
            http_token=http_token,
            state_dir=Path(state_dir),
            identify_interval_s=identify_interval,
            identify_margin_s=identify_margin,
            simulate=SimulateSettings.from_options(
                simulate,
                simulate_shards,
                simulate_max_concurrency,
                simulate_event_rate,
                privileged_intents,
                session_start_limit,
            ),
            log_format=parse_log_format(log_format),
            log_level=log_level.upper(),
            report_interval_s=report_interval,
            liveness_intervals=liveness_intervals,
            pub_hwm=pub_hwm,
            stop_timeout_s=stop_timeout,
            limit_refresh_s=limit_refresh,
            auto_reshard=auto_reshard,
            auto_reshard_interval_s=auto_reshard_interval,
            restart_policy=RestartPolicy(max_quick_deaths=max_quick_deaths),
            checkpoint_interval_s=checkpoint_interval,
        )
    except ConfigError as exc:
        usage_error(str(exc))
    if ctx.meta.get(_META_CHECK_ONLY):  # `cluster config`: checked, not run
        return
    run_async(_up(config))


def _security_options(
    curve_secret: str | None, curve_clients: str | None, http_token_file: str | None
) -> tuple[CurveServerKeys | None, str | None]:
    """``--curve-secret``, ``--curve-clients``, ``--http-token-file`` -> (CURVE keys, token)."""
    from cluster.config import ConfigError
    from cluster.curve import load_http_token, load_server_keys

    if (curve_secret is None) != (curve_clients is None):
        raise ConfigError(
            "--curve-secret and --curve-clients go together (the server's secret key and the "
            "client keys it lets in; `cluster keys` makes both)"
        )
    try:
        curve = (
            None
            if curve_secret is None or curve_clients is None
            else load_server_keys(curve_secret, curve_clients)
        )
        token = None if http_token_file is None else load_http_token(http_token_file)
    except ValueError as exc:  # CurveKeyError, SecretFileError: never the content
        raise ConfigError(str(exc)) from None
    return curve, token


async def _up(config: SupervisorConfig) -> None:
    from cluster import logging_setup
    from cluster.supervisor import FatalCloseError, Supervisor, SupervisorError

    logging_setup.configure(config.log_format, config.log_level, config.token)
    try:
        await Supervisor(config).run()
    except FatalCloseError as exc:
        raise CommandFailed(str(exc), ExitCode.FATAL) from None
    except SupervisorError as exc:
        raise CommandFailed(str(exc)) from None


# -- cluster config ------------------------------------------------------------------------------


def config_command(ctx: typer.Context, output_format: str = "toml", **options: Any) -> None:
    """Print the effective configuration of `cluster up` and where each value came from.

    Takes every option of `cluster up` (and --config, CLUSTER_*); the token and URL
    passwords are redacted. A bad configuration is the same one-line error as `cluster up`.
    """
    if output_format not in ("toml", "json"):
        usage_error(f"--format must be toml or json, got {output_format[:20]!r}")
    ctx.meta[_META_CHECK_ONLY] = True
    up(ctx, **options)  # the same checks and errors; nothing runs
    loaded: ConfigFile | None = ctx.meta.get(_META_FILE)
    render = render_json if output_format == "json" else render_toml
    print(render(_settings(ctx), None if loaded is None else loaded.path), end="")


def _config_signature() -> inspect.Signature:
    """``cluster up``'s parameters and ``--format``: the two commands take the same options."""
    up_signature = inspect.signature(up, eval_str=True)
    output_format = inspect.Parameter(
        "output_format",
        inspect.Parameter.KEYWORD_ONLY,
        default="toml",
        annotation=Annotated[
            str,
            typer.Option(
                "--format", help="toml (a file --config reads) or json.", allow_from_autoenv=False
            ),
        ],
    )
    return up_signature.replace(
        parameters=[*up_signature.parameters.values(), output_format], return_annotation=None
    )


config_command.__signature__ = _config_signature()  # type: ignore[attr-defined]
config_command.__annotations__ = {
    **{name: p.annotation for name, p in config_command.__signature__.parameters.items()},  # type: ignore[attr-defined]
    "return": None,
}
app.command(name="config", context_settings=UP_CONTEXT)(config_command)


# -- cluster keys --------------------------------------------------------------------------------


@app.command()
def keys(
    out: Annotated[
        str, typer.Option("--out", metavar="DIR", help="Directory the two key files go to.")
    ] = ".",
    name: Annotated[
        str,
        typer.Option(help="File name stem: NAME.key (public) and NAME.key_secret (mode 0600)."),
    ] = "server",
) -> None:
    """Make a CURVE key pair (for --curve-secret, or a client's); prints only the public key.

    The server's pair goes with `cluster up --curve-secret DIR/server.key_secret`; each
    client (a bot, `cluster tail`) makes its own pair with --name and hands its NAME.key
    to the server's --curve-clients directory. Existing files are never overwritten.
    """
    from cluster.curve import write_key_pair
    from protocol.curvezmq import encode_key

    try:
        public_path, secret_path, public = write_key_pair(out, name)
    except ValueError as exc:
        usage_error(str(exc))
    except OSError as exc:
        raise CommandFailed(f"cannot write keys to {out}: {exc.strerror or exc}") from None
    print(
        f"cluster keys: wrote {public_path} (public) and {secret_path} (secret, mode 0600)",
        file=sys.stderr,
    )
    print(encode_key(public))


# -- cluster coordinator (retired) ---------------------------------------------------------------

#: What ``cluster coordinator`` and ``cluster up --coordinator`` say now.
COORDINATOR_RETIRED: Final = (
    "`cluster coordinator` is retired: hosts sharing a bot share Redis instead; run each host as "
    "`cluster up --redis redis://HOST:6379/0 --shard-ids auto --hosts H` (see the README)"
)


@app.command(
    name="coordinator",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    hidden=True,
)
def coordinator_command() -> None:
    """Retired: several hosts share Redis (`cluster up --redis`)."""
    usage_error(COORDINATOR_RETIRED)


# -- entry point ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one-line errors, meaningful exit codes."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["up"] and "--help" not in args:
        from cluster.warm_start import start_forkserver

        start_forkserver()  # its imports (the workers') run while the options are parsed
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="cluster", standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError:
        sys.exit(ExitCode.USAGE)  # the help was printed
    except click_exceptions.UsageError as exc:
        message = with_origin(" ".join(exc.format_message().split()), _origins(exc.ctx))
        print(f"cluster: error: {message}", file=sys.stderr)
        sys.exit(ExitCode.USAGE)
    except click_exceptions.ClickException as exc:
        print(f"cluster: error: {' '.join(exc.format_message().split())}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(ExitCode.INTERRUPTED)
    except CommandFailed as exc:
        print(f"cluster: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    sys.exit(result if isinstance(result, int) else 0)
