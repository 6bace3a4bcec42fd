"""The :class:`Simulator`: one aiohttp server serving REST, the gateway and the admin API."""

from __future__ import annotations

import asyncio
import ipaddress
from types import TracebackType
from typing import Any

from aiohttp import web

from protocol.intents import parse_privileged_intents
from simulator.admin import Admin
from simulator.config import SimulatorConfig
from simulator.events import BotIdentity, EventFactory
from simulator.faults import FaultKind
from simulator.gateway import Gateway
from simulator.record import Record, UrlKind
from simulator.rest import Rest

#: Path of the resume URL handed out in READY (the main URL is "/").
RESUME_PATH = "/resume/"


class Simulator:
    """A local Discord: start it, point a client at ``rest_url`` / ``gateway_url``, assert on ``record``."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.record = Record()
        self.bot = BotIdentity(self.config.token, self.config.privileged_intents)
        self.factory = EventFactory(self.config, self.bot)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._gateway: Gateway | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        gateway = Gateway(self.config, self.record, self.factory, lambda: self.resume_url)
        self._gateway = gateway
        app = web.Application()
        Rest(
            self.config,
            self.record,
            self.bot,
            gateway.budget,
            lambda: self.gateway_url.rstrip("/"),
            lambda: gateway.recommended_shards,
        ).add_routes(app)
        Admin(gateway, self.record).add_routes(app)

        async def main_ws(request: web.Request) -> web.StreamResponse:
            return await gateway.handle(request, UrlKind.MAIN)

        async def resume_ws(request: web.Request) -> web.StreamResponse:
            return await gateway.handle(request, UrlKind.RESUME)

        app.router.add_get("/", main_ws)
        app.router.add_get("/resume", resume_ws)
        app.router.add_get(RESUME_PATH, resume_ws)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self.config.host, self.config.port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            self._runner = None
            raise
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self._port = sockets[0].getsockname()[1] if sockets else self.config.port
        gateway.start()

    async def stop(self) -> None:
        """Close every connection and task; safe to call twice."""
        if self._gateway is not None:
            await self._gateway.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def serve_forever(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (the CLI sets it from its signal handler)."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    # -- addresses ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("simulator not started")
        return self._port

    @property
    def _authority(self) -> str:
        host = self.config.host
        try:
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass
        return f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self._authority}"

    @property
    def rest_url(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self._authority}/"

    @property
    def resume_url(self) -> str:
        return f"ws://{self._authority}{RESUME_PATH}"

    @property
    def admin_url(self) -> str:
        return f"{self.base_url}/_sim"

    # -- in-process admin (mirrors /_sim/) ---------------------------------------------------

    @property
    def gateway(self) -> Gateway:
        if self._gateway is None:
            raise RuntimeError("simulator not started")
        return self._gateway

    def inject(
        self,
        shard_id: int | str | None,
        fault: FaultKind | str,
        conn_id: int | None = None,
        *,
        num_shards: int | None = None,
        **params: Any,
    ) -> list[int]:
        """Inject ``fault`` into the live connections of ``shard_id`` ("all": every one); returns conn ids.

        ``num_shards`` narrows it to one shard set (``shard_id="all"``: the whole set).
        """
        return self.gateway.inject(shard_id, fault, conn_id, num_shards, **params)

    def emit(
        self,
        shard_id: int,
        count: int = 1,
        event_type: str | None = None,
        *,
        num_shards: int | None = None,
    ) -> list[int]:
        """Produce ``count`` events now in the guilds of ``shard_id``; returns event ids.

        For each live shard set (or only ``num_shards``'s), ``count`` events
        happen in the guilds of its shard ``shard_id``; each reaches every
        live session covering its guild, whatever that session's shard count.
        """
        return self.gateway.emit(shard_id, count, event_type, num_shards)

    def emit_guild(
        self, guild_id: int | str, count: int = 1, event_type: str | None = None
    ) -> list[int]:
        """Produce ``count`` events now in one guild; each reaches every live session covering it."""
        return self.gateway.emit_guild(guild_id, count, event_type)

    def set_event_rate(self, rate: float) -> None:
        if not rate >= 0:
            raise ValueError("event rate must be >= 0")
        self.gateway.set_event_rate(rate)

    def set_chaos_rate(self, rate: float) -> None:
        if not rate >= 0:
            raise ValueError("chaos rate must be >= 0")
        self.gateway.set_chaos_rate(rate)

    def set_recommended_shards(self, value: int) -> None:
        """The shard count ``GET /gateway/bot`` answers from now on (Discord raising it as a bot grows)."""
        self.gateway.set_recommended_shards(value)

    def set_privileged_intents(self, value: int | str) -> None:
        """The Developer Portal toggles: bits or names (``"GUILD_MEMBERS,MESSAGE_CONTENT"``, ``"none"``)."""
        self.gateway.set_privileged_intents(parse_privileged_intents(value))

    def set_session_start_limit(
        self,
        total: int | None = None,
        remaining: int | None = None,
        reset_after_ms: int | None = None,
    ) -> None:
        """Raise (or lower) the daily session starts; a new ``total`` keeps the starts spent."""
        self.gateway.set_session_start_limit(total, remaining, reset_after_ms)

    def sessions(self) -> list[dict[str, Any]]:
        return self.gateway.snapshot()
