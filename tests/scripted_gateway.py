"""A scripted gateway for tests: an aiohttp websocket server on 127.0.0.1:0.

Subclasses implement :meth:`ScriptedGateway.handle` (what the server sends and
how it answers); this class owns the server's start and stop. For breaking
the protocol in ways the simulator never would.
"""

from __future__ import annotations

from aiohttp import web


class ScriptedGateway:
    """Serves ``handle`` at ``self.url`` (``ws://127.0.0.1:PORT/``) between start and stop."""

    url: str = ""
    _runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self.handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"ws://127.0.0.1:{port}/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
