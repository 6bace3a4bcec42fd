"""The simulator's REST API on a real socket: /gateway, /gateway/bot, login calls, admin API."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from simulator import ViolationKind, bot_id_from_token, discord_shaped_token
from tests.conftest import SimFactory

AUTH = {"Authorization": "Bot simulated-token"}


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        body = await resp.json(content_type=None)
        return resp.status, resp.headers["Content-Type"], body


async def post(url: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


@pytest.mark.parametrize("version", ["v9", "v10"])
async def test_gateway_bot_answers_its_own_url_and_limits(
    sim_factory: SimFactory, version: str
) -> None:
    sim = await sim_factory(
        shards=16, max_concurrency=4, session_start_total=2000, session_start_remaining=1500
    )
    status, ctype, body = await get(f"{sim.base_url}/api/{version}/gateway/bot", AUTH)
    assert status == 200
    # discord.py parses JSON only for exactly this content type
    assert ctype == "application/json"
    assert body["url"] == f"ws://127.0.0.1:{sim.port}"
    assert body["shards"] == 16
    limit = body["session_start_limit"]
    assert limit["total"] == 2000
    assert limit["remaining"] == 1500
    assert limit["max_concurrency"] == 4
    assert 0 < limit["reset_after"] <= 14_400_000


async def test_rest_url_is_the_v10_base(sim_factory: SimFactory) -> None:
    sim = await sim_factory()
    assert sim.rest_url == f"http://127.0.0.1:{sim.port}/api/v10"
    status, _, body = await get(sim.rest_url + "/gateway/bot", AUTH)
    assert status == 200 and body["shards"] == 1


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {"Authorization": "Bot wrong"},
        {"Authorization": "simulated-token"},
        {"Authorization": "Bearer simulated-token"},
    ],
)
async def test_wrong_or_missing_token_is_401_and_recorded(
    sim_factory: SimFactory, headers: dict[str, str] | None
) -> None:
    sim = await sim_factory()
    for path in ("/gateway/bot", "/users/@me", "/oauth2/applications/@me"):
        status, ctype, body = await get(sim.rest_url + path, headers)
        assert status == 401
        assert ctype == "application/json"
        assert body == {"message": "401: Unauthorized", "code": 0}
    assert len(sim.record.violations_of(ViolationKind.REST_UNAUTHORIZED)) == 3


async def test_gateway_needs_no_auth(sim_factory: SimFactory) -> None:
    sim = await sim_factory()
    status, _, body = await get(sim.rest_url + "/gateway")
    assert status == 200
    assert body == {"url": f"ws://127.0.0.1:{sim.port}"}


async def test_login_calls_answer_a_bot_user_and_its_application(sim_factory: SimFactory) -> None:
    sim = await sim_factory(privileged_intents=(1 << 15) | (1 << 1))
    status, _, me = await get(sim.rest_url + "/users/@me", AUTH)
    assert status == 200
    assert me["bot"] is True
    for key in ("id", "username", "discriminator", "avatar"):
        assert key in me
    status, _, app = await get(sim.rest_url + "/oauth2/applications/@me", AUTH)
    assert status == 200
    assert app["id"] == me["id"]
    for key in (
        "name",
        "description",
        "icon",
        "bot_public",
        "bot_require_code_grant",
        "owner",
        "verify_key",
    ):
        assert key in app
    # GATEWAY_GUILD_MEMBERS (1<<14) and GATEWAY_MESSAGE_CONTENT (1<<18), no GATEWAY_PRESENCE (1<<12)
    assert app["flags"] & (1 << 14) and app["flags"] & (1 << 18)
    assert not app["flags"] & (1 << 12)


async def test_bot_id_comes_from_a_discord_shaped_token(sim_factory: SimFactory) -> None:
    bot_id = 1122334455667788990
    token = discord_shaped_token(bot_id)
    assert bot_id_from_token(token) == bot_id
    assert bot_id_from_token("simulated-token") is None
    assert bot_id_from_token("bm90LWRpZ2l0cw.x.y") is None  # base64("not-digits")
    sim = await sim_factory(token=token)
    status, _, me = await get(sim.rest_url + "/users/@me", {"Authorization": f"Bot {token}"})
    assert status == 200 and me["id"] == str(bot_id)


async def test_unknown_route_is_discords_404(sim_factory: SimFactory) -> None:
    sim = await sim_factory()
    status, _, body = await get(sim.rest_url + "/channels/1/messages", AUTH)
    assert status == 404
    assert body == {"message": "404: Not Found", "code": 0}


async def test_admin_api_rejects_bad_requests(sim_factory: SimFactory) -> None:
    sim = await sim_factory()
    status, body = await post(sim.admin_url + "/fault", {"kind": "explode"})
    assert status == 400 and "unknown fault kind" in body["error"]
    status, body = await post(sim.admin_url + "/fault", {"kind": "close", "code": 99})
    assert status == 400 and "close code" in body["error"]
    status, body = await post(sim.admin_url + "/emit", {"shard_id": -1, "count": 1})
    assert status == 400
    status, body = await post(
        sim.admin_url + "/emit", {"shard_id": 0, "count": 1, "event_type": "NOPE"}
    )
    assert status == 400
    status, body = await post(sim.admin_url + "/config", {"event_rate": -1})
    assert status == 400
    status, body = await post(sim.admin_url + "/config", {"speed": 1})
    assert status == 400 and "unknown setting" in body["error"]
    status, body = await post(sim.admin_url + "/config", {"event_rate": 5, "chaos_rate": 0})
    assert status == 200 and body == {"ok": True, "event_rate": 5.0, "chaos_rate": 0.0}
    status, _, record = await get(sim.admin_url + "/record")
    assert status == 200 and record["identifies"] == [] and record["violations"] == []
    status, _, sessions = await get(sim.admin_url + "/sessions")
    assert status == 200 and sessions["sessions"] == []
    assert sessions["session_start_limit"]["remaining"] == 1000


def _ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
async def test_ipv6_host_urls_are_bracketed(sim_factory: SimFactory) -> None:
    sim = await sim_factory(host="::1")
    assert sim.rest_url == f"http://[::1]:{sim.port}/api/v10"
    assert sim.gateway_url == f"ws://[::1]:{sim.port}/"
    status, _, body = await get(sim.rest_url + "/gateway/bot", AUTH)
    assert status == 200 and body["url"] == f"ws://[::1]:{sim.port}"
