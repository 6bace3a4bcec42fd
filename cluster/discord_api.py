"""The one REST call the supervisor makes: ``GET /gateway/bot`` (aiohttp).

It answers the recommended shard count, the gateway URL and the
``session_start_limit`` (shared/PROTOCOL.md section 5; Discord's "Get Gateway
Bot"). Failures become one of three typed errors whose one-line messages the
CLI prints as they are: a bad token (401), an API that cannot be reached, or
an answer we cannot use. The token goes into the ``Authorization`` header and
nowhere else: not into an error, a log line, or a repr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import orjson

USER_AGENT: Final = "DiscordBot (https://github.com/titanium-cluster, 0.1)"
#: How much of an unexpected error body is quoted in the error message.
_BODY_QUOTE_CHARS: Final = 200


class DiscordApiError(Exception):
    """``GET /gateway/bot`` failed; the message is one line meant for the operator."""


class AuthenticationError(DiscordApiError):
    """Discord refused the token (401)."""

    def __init__(self) -> None:
        super().__init__("authentication failed (401): check DISCORD_TOKEN")


class ApiUnreachableError(DiscordApiError):
    """No HTTP answer at all: connection refused, DNS failure, timeout, TLS failure."""


class ApiResponseError(DiscordApiError):
    """An HTTP answer we cannot use: an unexpected status or a malformed body."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class SessionStartLimit:
    """Session starts (IDENTIFYs) allowed per window, left, and when the window resets."""

    total: int
    remaining: int
    reset_after_ms: int
    max_concurrency: int

    @property
    def reset_after_s(self) -> float:
        return self.reset_after_ms / 1000.0


@dataclass(frozen=True, slots=True)
class GatewayBot:
    """The answer of ``GET /gateway/bot``."""

    url: str
    shards: int
    session_start_limit: SessionStartLimit


def gateway_bot_url(api_url: str) -> str:
    return api_url.rstrip("/") + "/gateway/bot"


async def fetch_gateway_bot(
    api_url: str,
    token: str,
    session: aiohttp.ClientSession | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - one knob for connect + read, passed to aiohttp
) -> GatewayBot:
    """``GET {api_url}/gateway/bot`` with ``Authorization: Bot <token>``.

    Raises :class:`AuthenticationError`, :class:`ApiUnreachableError` or
    :class:`ApiResponseError`. ``session`` is used as is and left open.
    """
    url = gateway_bot_url(api_url)
    body = await _get(url, token, session, timeout)
    return parse_gateway_bot(body, url, token)


async def fetch_bot_user_id(
    api_url: str,
    token: str,
    session: aiohttp.ClientSession | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - as in fetch_gateway_bot
) -> str:
    """``GET {api_url}/users/@me``: the bot's user id (a snowflake, as a string).

    Redis keys are namespaced by it (DESIGN.md section 6), so one Redis serves several bots.
    """
    url = api_url.rstrip("/") + "/users/@me"
    body = await _get(url, token, session, timeout)
    try:
        user = orjson.loads(body)
        user_id = str(user["id"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise ApiResponseError(
            f"GET {url} answered without a user id: {_quote(body, token)}"
        ) from None
    if not (user_id.isascii() and user_id.isdigit()):
        raise ApiResponseError(f"GET {url} answered a user id that is not a snowflake")
    return user_id


async def _get(
    url: str,
    token: str,
    session: aiohttp.ClientSession | None,
    timeout: float,  # noqa: ASYNC109
) -> bytes:
    headers = {"Authorization": f"Bot {token}", "User-Agent": USER_AGENT}
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    own_session = session is None
    http = aiohttp.ClientSession() if session is None else session
    try:
        try:
            async with http.get(url, headers=headers, timeout=client_timeout) as response:
                status = response.status
                body = await response.read()
        except TimeoutError:
            raise ApiUnreachableError(
                f"Discord API unreachable: GET {url} timed out after {timeout:g} s"
            ) from None
        except aiohttp.ClientConnectionError as exc:
            raise ApiUnreachableError(
                f"Discord API unreachable: GET {url} failed: {_describe(exc)}"
            ) from None
        except aiohttp.InvalidURL:
            raise ApiUnreachableError(f"Discord API URL is not valid: {url}") from None
        except aiohttp.ClientError as exc:
            raise ApiUnreachableError(
                f"Discord API unreachable: GET {url} failed: {_describe(exc)}"
            ) from None
    finally:
        if own_session:
            await http.close()
    if status == 401:
        raise AuthenticationError()
    if status != 200:
        raise ApiResponseError(
            f"GET {url} answered HTTP {status}: {_quote(body, token)}",
            status,
        )
    return body


def parse_gateway_bot(body: bytes, url: str = "/gateway/bot", token: str = "") -> GatewayBot:
    """Validate the documented shape; anything else is an :class:`ApiResponseError`."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiResponseError(
            f"GET {url} answered malformed JSON: {_quote(body, token)}", 200
        ) from None
    if not isinstance(obj, dict):
        raise ApiResponseError(f"GET {url} answered {type(obj).__name__}, not a JSON object", 200)
    gateway_url = obj.get("url")
    if not isinstance(gateway_url, str) or not gateway_url:
        raise ApiResponseError(f"GET {url} answered no gateway 'url'", 200)
    shards = _positive_int(obj, "shards", url, minimum=1)
    limit = obj.get("session_start_limit")
    if not isinstance(limit, dict):
        raise ApiResponseError(f"GET {url} answered no 'session_start_limit' object", 200)
    return GatewayBot(
        url=gateway_url,
        shards=shards,
        session_start_limit=SessionStartLimit(
            total=_positive_int(limit, "total", url, minimum=0),
            remaining=_positive_int(limit, "remaining", url, minimum=0),
            reset_after_ms=_positive_int(limit, "reset_after", url, minimum=0),
            max_concurrency=_positive_int(limit, "max_concurrency", url, minimum=1),
        ),
    )


def _positive_int(obj: dict[str, Any], key: str, url: str, *, minimum: int) -> int:
    value = obj.get(key)
    # Discord sends integers; tolerate an integral float such as 14400000.0.
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ApiResponseError(
            f"GET {url} answered {key}={str(value)[:40]!r}, expected an integer >= {minimum}", 200
        )
    return value


def _quote(body: bytes, token: str) -> str:
    text = body.decode("utf-8", "replace")
    if token:
        # A server that echoes the request (a proxy's error page) must not leak the token.
        text = text.replace(token, "<token>")
    text = " ".join(text[:_BODY_QUOTE_CHARS].split())
    return repr(text) if text else "(empty body)"


def _describe(exc: BaseException) -> str:
    # aiohttp's messages name the host and the OS error, never request headers.
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]
