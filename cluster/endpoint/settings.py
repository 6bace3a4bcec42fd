"""``cluster up --gateway HOST:PORT`` and its options, validated into :class:`GatewaySettings`.

Security (the rule of ``--pub``/``--control``/``--health``, README "Security off
loopback"): on loopback the endpoint asks a client only what Discord asks, the
bot token in IDENTIFY and RESUME. Bound anywhere else it also needs a token of
its own, ``--gateway-token-file FILE``: every request (the websocket and the
REST routes) must carry it as the first path segment of the URL
(``ws://HOST:PORT/<token>/``, which libraries keep when they add their query)
or as ``Authorization: Bearer <token>``; anything else gets 401 before a byte
of the gateway is spoken. The token must be URL-safe (``openssl rand -hex 32``).
Neither token is ever logged, echoed or shown in /status.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cluster.endpoint.cache import DEFAULT_MEMBER_CAP, DEFAULT_PRESENCE_CAP
from cluster.endpoint.session import DEFAULT_REPLAY_BYTES, DEFAULT_REPLAY_EVENTS

#: Discord's observed interval (shared/PROTOCOL.md section 3).
DEFAULT_HEARTBEAT_INTERVAL_MS: Final = 41_250
#: How long a disconnected client's session stays resumable.
DEFAULT_RESUME_WINDOW_S: Final = 120.0
#: Bytes written to a client's socket and not yet read before the writer stops writing.
DEFAULT_WRITE_HIGH_WATER: Final = 4 * 1024 * 1024
#: Connections at once (beyond: 503 before the upgrade).
DEFAULT_MAX_CLIENTS: Final = 1024
#: How often the guild cache is saved to the state dir (a SIGKILL then costs a replay,
#: not an IDENTIFY; see :mod:`cluster.endpoint.persist`).
DEFAULT_CACHE_SAVE_INTERVAL_S: Final = 30.0

_URL_SAFE: Final = re.compile(r"[A-Za-z0-9._~-]{16,256}")

NEEDS_GATEWAY_TOKEN: Final = (
    "--gateway {host}:{port} is not on loopback: off loopback the gateway endpoint needs a "
    "token of its own in every client URL; write one to a file (e.g. `openssl rand -hex 32 > "
    "FILE`, mode 0600) and pass --gateway-token-file FILE"
)


class GatewaySettingsError(ValueError):
    """A bad ``--gateway*`` value; the message never holds a token."""


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """The endpoint's configuration (the bot token is the cluster's own, passed apart)."""

    host: str
    port: int
    #: ``--gateway-token-file``: required in every URL (or as a bearer); required off loopback.
    access_token: str | None = field(default=None, repr=False)
    heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS
    member_cap: int = DEFAULT_MEMBER_CAP
    presence_cap: int = DEFAULT_PRESENCE_CAP
    replay_events: int = DEFAULT_REPLAY_EVENTS
    replay_bytes: int = DEFAULT_REPLAY_BYTES
    resume_window_s: float = DEFAULT_RESUME_WINDOW_S
    write_high_water: int = DEFAULT_WRITE_HIGH_WATER
    max_clients: int = DEFAULT_MAX_CLIENTS
    cache_save_interval_s: float = DEFAULT_CACHE_SAVE_INTERVAL_S

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise GatewaySettingsError(f"--gateway port must be 0-65535, got {self.port}")
        if not 100 <= self.heartbeat_interval_ms <= 3_600_000:
            raise GatewaySettingsError("the gateway heartbeat interval must be 100 ms to 1 h")
        if self.member_cap < 1 or self.presence_cap < 0:
            raise GatewaySettingsError("--gateway-member-cap must be at least 1")
        if self.replay_events < 1 or self.replay_bytes < 1024:
            raise GatewaySettingsError("the replay buffer must hold at least 1 event and 1 KiB")
        if not (math.isfinite(self.resume_window_s) and self.resume_window_s > 0):
            raise GatewaySettingsError("the resume window must be > 0 s")
        if self.write_high_water < 1024 or self.max_clients < 1:
            raise GatewaySettingsError("the write high water and max clients must be positive")
        if not (math.isfinite(self.cache_save_interval_s) and self.cache_save_interval_s >= 0.1):
            raise GatewaySettingsError("the gateway cache save interval must be at least 0.1 s")


def parse_gateway(text: str | None) -> tuple[str, int] | None:
    """``--gateway HOST:PORT`` (``[v6]:port``; a bare ``:PORT`` or ``PORT`` is loopback)."""
    if text is None or not text.strip() or text.strip().lower() in ("none", "off"):
        return None
    raw = text.strip()
    if raw.isascii() and raw.isdigit():
        raw = f"127.0.0.1:{raw}"
    host, sep, port_text = raw.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if (
        not sep
        or not (port_text.isascii() and port_text.isdigit())
        or not 0 <= int(port_text) <= 65535
    ):
        raise GatewaySettingsError(
            f"--gateway must be HOST:PORT, e.g. 127.0.0.1:7878, got {text[:60]!r}"
        )
    return host, int(port_text)


def load_gateway_token(path: str | Path) -> str:
    """``--gateway-token-file``: one URL-safe token of 16-256 characters."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise GatewaySettingsError(f"cannot read --gateway-token-file {file}: {why}") from None
    token = text.strip()
    if not _URL_SAFE.fullmatch(token):
        raise GatewaySettingsError(
            f"--gateway-token-file {file} must hold one token of 16-256 URL-safe characters "
            "(letters, digits, - . _ ~), e.g. from `openssl rand -hex 32`"
        )
    return token
