"""The gateway endpoint with ``--gateway-token-file``: nothing without the token, in process.

A :class:`cluster.endpoint.server.GatewayEndpoint` on 127.0.0.1:0 with an access
token (as off loopback) and no range: a websocket or REST request without the
token (first path segment, or ``Authorization: Bearer``) gets 401 before a byte of
the gateway; with it, Hello and the REST answers, whose URLs carry the token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from cluster.endpoint.server import GatewayEndpoint
from cluster.endpoint.settings import GatewaySettings

ACCESS = "0123456789abcdef0123456789abcdef"
BOT_TOKEN = "bot-token-for-the-test"


@pytest.fixture
async def endpoint() -> AsyncIterator[GatewayEndpoint]:
    server = GatewayEndpoint(
        GatewaySettings("127.0.0.1", 0, access_token=ACCESS), BOT_TOKEN, 4, 513
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_nothing_without_the_token(endpoint: GatewayEndpoint) -> None:
    base = f"http://127.0.0.1:{endpoint.port}"
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/api/v10/gateway", f"/{ACCESS[:-1]}/api/v10/gateway", "/x/"):
            async with http.get(base + path) as response:
                assert response.status == 401, path
                assert ACCESS not in await response.text()
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(f"ws://127.0.0.1:{endpoint.port}/?v=10&encoding=json")
        async with http.get(f"{base}/{ACCESS}/api/v10/gateway") as response:
            body = await response.json()
        assert body == {"url": f"ws://127.0.0.1:{endpoint.port}/{ACCESS}/"}
        async with http.get(
            f"{base}/api/v10/gateway/bot",
            headers={"Authorization": f"Bearer {ACCESS}"},
        ) as response:
            assert response.status == 401  # the access token, but not the bot token
        async with http.get(
            f"{base}/{ACCESS}/api/v10/gateway/bot", headers={"Authorization": f"Bot {BOT_TOKEN}"}
        ) as response:
            assert (await response.json())["shards"] == 4
        async with http.ws_connect(f"{body['url']}?v=10&encoding=json") as ws:
            hello = await ws.receive_json(timeout=5)
            assert hello["op"] == 10
    assert ACCESS not in endpoint.display_url
    assert ACCESS not in str(endpoint.status_json())
