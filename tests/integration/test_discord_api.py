"""``GET /gateway/bot`` against a tiny aiohttp server on 127.0.0.1:0, and against the simulator."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cluster.discord_api import (
    USER_AGENT,
    ApiResponseError,
    ApiUnreachableError,
    AuthenticationError,
    DiscordApiError,
    GatewayBot,
    SessionStartLimit,
    fetch_gateway_bot,
)

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.secret-token-value"
DOC_BODY = (
    b'{"url":"wss://gateway.discord.gg/","shards":9,'
    b'"session_start_limit":{"total":1000,"remaining":999,"reset_after":14400000,"max_concurrency":1}}'
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[tuple[str, list[web.Request]]]:
    """An HTTP server on an ephemeral loopback port answering ``/api/v10/gateway/bot``."""
    seen: list[web.Request] = []

    async def recording(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        return await handler(request)

    app = web.Application()
    app.router.add_get("/api/v10/gateway/bot", recording)
    app.router.add_get("/api/v10/users/@me", recording)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{port}/api/v10", seen
    finally:
        await runner.cleanup()
        sock.close()


def answer(body: bytes, status: int = 200) -> Handler:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=body, status=status, content_type="application/json")

    return handler


def assert_one_line_without_token(exc: BaseException) -> None:
    text = str(exc)
    assert TOKEN not in text and "secret-token" not in text
    assert "\n" not in text and text
    assert TOKEN not in repr(exc)


async def test_the_documented_answer_is_parsed_and_the_request_is_well_formed() -> None:
    async with serve(answer(DOC_BODY)) as (api, seen):
        bot = await fetch_gateway_bot(api + "/", TOKEN)
    assert bot == GatewayBot(
        url="wss://gateway.discord.gg/",
        shards=9,
        session_start_limit=SessionStartLimit(
            total=1000, remaining=999, reset_after_ms=14_400_000, max_concurrency=1
        ),
    )
    assert bot.session_start_limit.reset_after_s == 14_400.0
    assert TOKEN not in repr(bot)
    (request,) = seen
    assert request.headers["Authorization"] == f"Bot {TOKEN}"
    assert request.headers["User-Agent"] == USER_AGENT


async def test_a_given_session_is_used_and_left_open() -> None:
    async with serve(answer(DOC_BODY)) as (api, _), aiohttp.ClientSession() as http:
        bot = await fetch_gateway_bot(api, TOKEN, session=http)
        assert bot.shards == 9 and not http.closed


async def test_401_is_an_authentication_error_naming_the_fix() -> None:
    async with serve(answer(b'{"message": "401: Unauthorized", "code": 0}', 401)) as (api, _):
        with pytest.raises(AuthenticationError) as info:
            await fetch_gateway_bot(api, TOKEN)
    assert str(info.value) == "authentication failed (401): check DISCORD_TOKEN"


async def test_a_server_error_is_a_response_error_and_never_quotes_the_token() -> None:
    body = (
        b"<html>500 Internal Server Error; you sent Authorization: Bot "
        + TOKEN.encode()
        + b"</html>"
    )
    async with serve(answer(body, 500)) as (api, _):
        with pytest.raises(ApiResponseError) as info:
            await fetch_gateway_bot(api, TOKEN)
    assert info.value.status == 500
    assert "HTTP 500" in str(info.value) and "<token>" in str(info.value)
    assert_one_line_without_token(info.value)


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b"",
        b"[]",
        b'{"shards":9,"session_start_limit":{}}',
        b'{"url":"wss://x/","shards":0,"session_start_limit":{"total":1,"remaining":1,"reset_after":1,"max_concurrency":1}}',
        b'{"url":"wss://x/","shards":"9","session_start_limit":{"total":1,"remaining":1,"reset_after":1,"max_concurrency":1}}',
        b'{"url":"wss://x/","shards":9}',
        b'{"url":"wss://x/","shards":9,"session_start_limit":{"total":1,"remaining":-1,"reset_after":1,"max_concurrency":1}}',
        b'{"url":"wss://x/","shards":9,"session_start_limit":{"total":1,"remaining":1,"reset_after":1,"max_concurrency":0}}',
        b'{"url":"wss://x/","shards":9,"session_start_limit":{"total":1,"remaining":1,"reset_after":1}}',
    ],
)
async def test_a_malformed_answer_is_a_response_error(body: bytes) -> None:
    async with serve(answer(body)) as (api, _):
        with pytest.raises(ApiResponseError) as info:
            await fetch_gateway_bot(api, TOKEN)
    assert_one_line_without_token(info.value)


async def test_an_integral_float_is_accepted() -> None:
    body = DOC_BODY.replace(b"14400000", b"14400000.0")
    async with serve(answer(body)) as (api, _):
        bot = await fetch_gateway_bot(api, TOKEN)
    assert bot.session_start_limit.reset_after_ms == 14_400_000


async def test_a_closed_port_is_unreachable_in_one_line_naming_the_url() -> None:
    # A bound socket that never listens: the port is ours and refuses every connection.
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        api = f"http://127.0.0.1:{port}/api/v10"
        with pytest.raises(ApiUnreachableError) as info:
            await fetch_gateway_bot(api, TOKEN)
    assert f"{api}/gateway/bot" in str(info.value)
    assert_one_line_without_token(info.value)


async def test_a_server_that_never_answers_times_out() -> None:
    release = asyncio.Event()

    async def stall(_: web.Request) -> web.Response:
        await release.wait()
        return web.Response(body=DOC_BODY)

    async with serve(stall) as (api, _):
        try:
            with pytest.raises(ApiUnreachableError, match=r"timed out after 0\.2 s") as info:
                await fetch_gateway_bot(api, TOKEN, timeout=0.2)
        finally:
            release.set()
    assert_one_line_without_token(info.value)


async def test_an_unresolvable_host_is_unreachable() -> None:
    with pytest.raises(ApiUnreachableError) as info:
        await fetch_gateway_bot("http://no-such-host.invalid/api/v10", TOKEN, timeout=5)
    assert "no-such-host.invalid" in str(info.value)
    assert_one_line_without_token(info.value)


async def test_every_error_is_a_discord_api_error() -> None:
    assert issubclass(AuthenticationError, DiscordApiError)
    assert issubclass(ApiUnreachableError, DiscordApiError)
    assert issubclass(ApiResponseError, DiscordApiError)


# -- against the simulator ------------------------------------------------------------------------


async def test_against_the_simulator() -> None:
    from simulator import Simulator, SimulatorConfig

    config = SimulatorConfig(
        token=TOKEN,
        shards=8,
        max_concurrency=4,
        session_start_total=1000,
        session_start_remaining=990,
    )
    async with Simulator(config) as sim:
        bot = await fetch_gateway_bot(sim.rest_url, TOKEN)
        assert bot.shards == 8
        limit = bot.session_start_limit
        assert (limit.total, limit.remaining, limit.max_concurrency) == (1000, 990, 4)
        assert limit.reset_after_ms > 0
        assert bot.url.startswith("ws://127.0.0.1:")
        with pytest.raises(AuthenticationError):
            await fetch_gateway_bot(sim.rest_url, "wrong-token")


async def test_the_bot_user_id_comes_from_users_me(sim_factory: Any) -> None:
    from cluster.discord_api import fetch_bot_user_id

    sim = await sim_factory(shards=1)
    user_id = await fetch_bot_user_id(sim.rest_url, sim.config.token)
    assert user_id.isdigit()
    with pytest.raises(AuthenticationError):
        await fetch_bot_user_id(sim.rest_url, "wrong-token")


async def test_a_users_me_without_an_id_is_one_clear_error() -> None:
    from cluster.discord_api import fetch_bot_user_id

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"username": "x"})

    async with serve(handler) as (url, _):
        with pytest.raises(ApiResponseError, match="without a user id"):
            await fetch_bot_user_id(url, "secret-token")
