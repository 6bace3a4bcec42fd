"""The REST calls client libraries make at login, answered as Discord does for a bot.

- ``GET /api/v{9,10}/gateway`` (no auth): ``{"url"}``
- ``GET /api/v{9,10}/gateway/bot``: ``{"url", "shards", "session_start_limit"}``; ``shards``
  is the recommended count as it is now (``Simulator.set_recommended_shards``)
- ``GET /api/v{9,10}/users/@me``: the bot user (discord.py's ``static_login``)
- ``GET /api/v{9,10}/oauth2/applications/@me``: the application (discord.py's ``login``)

Authenticated routes want ``Authorization: Bot <token>``; anything else gets
401 ``{"message": "401: Unauthorized", "code": 0}``. Unknown routes get
Discord's 404 body. Bodies are sent with ``Content-Type: application/json``
exactly (no charset): discord.py parses JSON only for that exact value.
Rate-limit headers look like Discord's, with room to spare.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web

from simulator.config import SimulatorConfig
from simulator.events import BotIdentity
from simulator.record import Record, Violation, ViolationKind
from simulator.sessions import SessionStartBudget

API_VERSIONS: Final = ("9", "10")


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


class Rest:
    """REST routes of the simulated API."""

    def __init__(
        self,
        config: SimulatorConfig,
        record: Record,
        bot: BotIdentity,
        budget: SessionStartBudget,
        gateway_url: Callable[[], str],
        recommended_shards: Callable[[], int] | None = None,
    ) -> None:
        self.config = config
        self.record = record
        self.bot = bot
        self.budget = budget
        self._gateway_url = gateway_url
        #: read on every request: the admin API may raise it at run time (None: ``config.shards``)
        self._recommended_shards = recommended_shards

    def add_routes(self, app: web.Application) -> None:
        for v in API_VERSIONS:
            base = f"/api/v{v}"
            app.router.add_get(f"{base}/gateway", self.gateway)
            app.router.add_get(f"{base}/gateway/bot", self._authed(self.gateway_bot))
            app.router.add_get(f"{base}/users/@me", self._authed(self.users_me))
            app.router.add_get(f"{base}/oauth2/applications/@me", self._authed(self.application))
            app.router.add_route("*", base + "/{tail:.*}", self.not_found)

    def _authed(
        self, handler: Callable[[web.Request], Awaitable[web.Response]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def wrapped(request: web.Request) -> web.Response:
            header = request.headers.get("Authorization", "")
            expected = f"Bot {self.config.token}"
            if not hmac.compare_digest(header.encode(), expected.encode()):
                self.record.rest_requests.append((request.method, request.path, 401))
                self.record.add(
                    Violation(
                        ViolationKind.REST_UNAUTHORIZED,
                        None,
                        time.monotonic(),
                        401,
                        None,
                        f"{request.method} {request.path}",
                    )
                )
                return json_response({"message": "401: Unauthorized", "code": 0}, status=401)
            response = await handler(request)
            self.record.rest_requests.append((request.method, request.path, response.status))
            return response

        return wrapped

    @staticmethod
    def _ratelimit_headers(bucket: str) -> dict[str, str]:
        now = time.time()
        return {
            "X-RateLimit-Bucket": bucket,
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "4",
            "X-RateLimit-Reset": f"{now + 1:.3f}",
            "X-RateLimit-Reset-After": "1.000",
        }

    async def gateway(self, request: web.Request) -> web.Response:
        self.record.rest_requests.append((request.method, request.path, 200))
        return json_response({"url": self._gateway_url()})

    async def gateway_bot(self, request: web.Request) -> web.Response:
        body = {
            "url": self._gateway_url(),
            "shards": self.config.shards
            if self._recommended_shards is None
            else self._recommended_shards(),
            "session_start_limit": self.budget.to_json(
                time.monotonic(), self.config.max_concurrency
            ),
        }
        return json_response(
            body, headers=self._ratelimit_headers("41f9cd5d28af77da04563bcb1d67fdfd")
        )

    async def users_me(self, request: web.Request) -> web.Response:
        return json_response(
            self.bot.me(), headers=self._ratelimit_headers("78dcbdbd0e1bd9ab9fc5d1a6c7e1c8d1")
        )

    async def application(self, request: web.Request) -> web.Response:
        return json_response(
            self.bot.application(),
            headers=self._ratelimit_headers("a6f0b1c9e3d24f17b5c8a0e2d9f4c3b1"),
        )

    async def not_found(self, request: web.Request) -> web.Response:
        self.record.rest_requests.append((request.method, request.path, 404))
        return json_response({"message": "404: Not Found", "code": 0}, status=404)
