"""Builders for every payload a client sends, their encoding, and command validation.

Each builder returns the payload as a dict ``{"op": int, "d": ...}`` with the
fields Discord documents (shared/PROTOCOL.md sections 1 and 4; Discord's "Send
Events" in developers/events/gateway-events.mdx). :func:`encode_client_payload`
turns one into bytes and enforces the 4096-byte client limit (close 4002).
:func:`validate_command` checks what a bot asks us to send on the control socket
(DESIGN.md 4.3) before it reaches a shard.

The token is a secret: the ``d`` of Identify and Resume is a dict whose repr
hides it, and no error raised here ever contains it.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import orjson

from protocol.errors import InvalidCommandError, PayloadTooLargeError
from protocol.gateway import CLIENT_PAYLOAD_LIMIT, COMMAND_OPCODES, Opcode
from protocol.intents import validate_intents
from protocol.sharding import parse_snowflake

LIBRARY_NAME: Final = "titanium-cluster"
#: Bounds of Identify's ``large_threshold`` (docs: 50..250, default 50).
LARGE_THRESHOLD_MIN: Final = 50
LARGE_THRESHOLD_MAX: Final = 250
#: Request Guild Members: at most 100 user ids, a nonce of at most 32 bytes.
MAX_MEMBER_USER_IDS: Final = 100
MAX_NONCE_BYTES: Final = 32

Payload = dict[str, Any]


class Status(enum.StrEnum):
    """Presence status values (docs "Update Presence", status types)."""

    ONLINE = "online"
    DND = "dnd"
    IDLE = "idle"
    INVISIBLE = "invisible"
    OFFLINE = "offline"


class ActivityType(enum.IntEnum):
    """Activity types a bot may set (docs "Activity Object", activity types; not 1, streaming)."""

    PLAYING = 0
    LISTENING = 2
    WATCHING = 3
    CUSTOM = 4
    COMPETING = 5


#: Longest activity name or custom status text accepted (Discord's limit).
ACTIVITY_TEXT_MAX: Final = 128


def parse_activity(text: str) -> dict[str, Any]:
    """``"playing|listening|watching|competing:NAME"`` or ``"custom:TEXT"`` -> an activity object.

    Raises InvalidCommandError naming the accepted forms.
    """
    kind, sep, name = text.partition(":")
    forms = "playing:NAME, listening:NAME, watching:NAME, competing:NAME or custom:TEXT"
    try:
        activity_type = ActivityType[kind.strip().upper()]
    except KeyError:
        raise InvalidCommandError(f"an activity is {forms}, got {text[:40]!r}") from None
    name = name.strip()
    if not sep or not name:
        raise InvalidCommandError(f"an activity needs a text after the colon: {forms}")
    if len(name) > ACTIVITY_TEXT_MAX:
        raise InvalidCommandError(
            f"an activity's text is at most {ACTIVITY_TEXT_MAX} characters, got {len(name)}"
        )
    if activity_type is ActivityType.CUSTOM:
        return {"name": "Custom Status", "type": activity_type.value, "state": name}
    return {"name": name, "type": activity_type.value}


class _SecretData(dict[str, Any]):
    """The ``d`` of Identify/Resume: a plain dict to orjson, with the token hidden in repr."""

    __slots__ = ()

    def __repr__(self) -> str:
        shown = {k: ("<redacted>" if k == "token" else v) for k, v in self.items()}
        return repr(shown)


def default_properties() -> dict[str, str]:
    """Identify's connection properties: the OS and this library's name."""
    return {"os": sys.platform, "browser": LIBRARY_NAME, "device": LIBRARY_NAME}


def _check_token(token: str) -> str:
    # Never echo the value: only its type and emptiness are reported.
    if not isinstance(token, str) or not token or token != token.strip():
        raise InvalidCommandError("the token must be a non-empty string without surrounding spaces")
    return token


def _check_int(value: object, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidCommandError(f"{what} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise InvalidCommandError(f"{what} must be at least {minimum}, got {value}")
    return value


def _snowflake(value: object, what: str) -> str:
    try:
        return str(parse_snowflake(value, what))
    except ValueError as exc:
        raise InvalidCommandError(str(exc)) from None


def identify(
    token: str,
    shard_id: int,
    num_shards: int,
    intents: int,
    properties: Mapping[str, str] | None = None,
    presence: Mapping[str, Any] | None = None,
    large_threshold: int | None = None,
    compress: bool = False,
) -> Payload:
    """Op 2 Identify for shard ``[shard_id, num_shards]``."""
    _check_int(num_shards, "num_shards", 1)
    _check_int(shard_id, "shard_id")
    if shard_id >= num_shards:
        raise InvalidCommandError(f"shard_id {shard_id} is not below num_shards {num_shards}")
    intents = validate_intents(_check_int(intents, "intents"))  # UnknownIntentError
    d = _SecretData(
        token=_check_token(token),
        properties=dict(properties) if properties is not None else default_properties(),
        intents=intents,
        shard=[shard_id, num_shards],
    )
    if compress:
        d["compress"] = True
    if large_threshold is not None:
        _check_int(large_threshold, "large_threshold", LARGE_THRESHOLD_MIN)
        if large_threshold > LARGE_THRESHOLD_MAX:
            raise InvalidCommandError(
                f"large_threshold must be at most {LARGE_THRESHOLD_MAX}, got {large_threshold}"
            )
        d["large_threshold"] = large_threshold
    if presence is not None:
        _check_presence(presence)
        d["presence"] = dict(presence)
    return {"op": Opcode.IDENTIFY.value, "d": d}


def resume(token: str, session_id: str, seq: int) -> Payload:
    """Op 6 Resume of ``session_id`` from sequence ``seq``."""
    if not isinstance(session_id, str) or not session_id:
        raise InvalidCommandError("session_id must be a non-empty string")
    d = _SecretData(token=_check_token(token), session_id=session_id, seq=_check_int(seq, "seq"))
    return {"op": Opcode.RESUME.value, "d": d}


def heartbeat(seq: int | None) -> Payload:
    """Op 1 Heartbeat carrying the last sequence number received (None before any)."""
    if seq is not None:
        _check_int(seq, "seq")
    return {"op": Opcode.HEARTBEAT.value, "d": seq}


def presence(
    status: Status | str = Status.ONLINE,
    activities: Sequence[Mapping[str, Any]] = (),
    since: int | None = None,
    afk: bool = False,
) -> dict[str, Any]:
    """The Update Presence object: the ``d`` of op 3 and Identify's ``presence``."""
    d: dict[str, Any] = {
        "since": since,
        "activities": [dict(a) for a in activities],
        "status": str(status),
        "afk": afk,
    }
    _check_presence(d)
    return d


def presence_update(
    status: Status | str = Status.ONLINE,
    activities: Sequence[Mapping[str, Any]] = (),
    since: int | None = None,
    afk: bool = False,
) -> Payload:
    """Op 3 Presence Update."""
    return {"op": Opcode.PRESENCE_UPDATE.value, "d": presence(status, activities, since, afk)}


def voice_state_update(
    guild_id: int | str,
    channel_id: int | str | None,
    self_mute: bool = False,
    self_deaf: bool = False,
) -> Payload:
    """Op 4 Voice State Update: join or move to ``channel_id``, or leave with None."""
    d = {
        "guild_id": _snowflake(guild_id, "guild_id"),
        "channel_id": None if channel_id is None else _snowflake(channel_id, "channel_id"),
        "self_mute": self_mute,
        "self_deaf": self_deaf,
    }
    _check_voice_state(d)
    return {"op": Opcode.VOICE_STATE_UPDATE.value, "d": d}


def request_guild_members(
    guild_id: int | str,
    query: str | None = None,
    limit: int = 0,
    user_ids: Iterable[int | str] | None = None,
    presences: bool = False,
    nonce: str | None = None,
) -> Payload:
    """Op 8 Request Guild Members, by ``query``/``limit`` or by ``user_ids``.

    With neither, it asks for all members (``query=""``, ``limit=0``), which
    Discord limits to one request per guild per 30 s.
    """
    d: dict[str, Any] = {"guild_id": _snowflake(guild_id, "guild_id")}
    if user_ids is not None:
        if query is not None:
            raise InvalidCommandError("request_guild_members takes query or user_ids, not both")
        d["user_ids"] = [_snowflake(u, "user_ids[]") for u in user_ids]
    else:
        d["query"] = "" if query is None else query
        d["limit"] = limit
    if presences:
        d["presences"] = True
    if nonce is not None:
        d["nonce"] = nonce
    _check_request_guild_members(d)
    return {"op": Opcode.REQUEST_GUILD_MEMBERS.value, "d": d}


def request_soundboard_sounds(guild_ids: Iterable[int | str]) -> Payload:
    """Op 31 Request Soundboard Sounds for ``guild_ids``."""
    d = {"guild_ids": [_snowflake(g, "guild_ids[]") for g in guild_ids]}
    _check_request_soundboard_sounds(d)
    return {"op": Opcode.REQUEST_SOUNDBOARD_SOUNDS.value, "d": d}


def request_channel_info(
    guild_id: int | str, fields: Sequence[str] = ("status", "voice_start_time")
) -> Payload:
    """Op 43 Request Channel Info: ``fields`` of ``guild_id``'s channels."""
    d = {"guild_id": _snowflake(guild_id, "guild_id"), "fields": list(fields)}
    _check_request_channel_info(d)
    return {"op": Opcode.REQUEST_CHANNEL_INFO.value, "d": d}


def encode_client_payload(payload: Mapping[str, Any]) -> bytes:
    """Serialize one client payload; raise PayloadTooLargeError above 4096 bytes."""
    try:
        data = orjson.dumps(payload if isinstance(payload, dict) else dict(payload))
    except orjson.JSONEncodeError as exc:
        # orjson names the offending type, never a value, so the token cannot leak here.
        raise InvalidCommandError(f"payload is not JSON-serializable: {exc}") from None
    if len(data) > CLIENT_PAYLOAD_LIMIT:
        raise PayloadTooLargeError(len(data), CLIENT_PAYLOAD_LIMIT)
    return data


# --- validation of commands (control socket, DESIGN.md 4.3) -------------------------


def _require(d: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in d:
        raise InvalidCommandError(f"{what}: d.{key} is required")
    return d[key]


def _check_bool(value: object, what: str) -> None:
    if not isinstance(value, bool):
        raise InvalidCommandError(f"{what} must be a bool, not {type(value).__name__}")


def _check_presence(d: Mapping[str, Any]) -> None:
    what = "presence update"
    since = _require(d, "since", what)
    if since is not None:
        _check_int(since, "d.since")
    activities = _require(d, "activities", what)
    if not isinstance(activities, list) or not all(isinstance(a, dict) for a in activities):
        raise InvalidCommandError("d.activities must be a list of activity objects")
    status = _require(d, "status", what)
    if status not in Status.__members__.values():
        raise InvalidCommandError(
            f"d.status must be one of {', '.join(s.value for s in Status)}, got {status!r:.40}"
        )
    _check_bool(_require(d, "afk", what), "d.afk")


def _check_voice_state(d: Mapping[str, Any]) -> None:
    what = "voice state update"
    _snowflake(_require(d, "guild_id", what), "d.guild_id")
    channel_id = _require(d, "channel_id", what)
    if channel_id is not None:
        _snowflake(channel_id, "d.channel_id")
    _check_bool(_require(d, "self_mute", what), "d.self_mute")
    _check_bool(_require(d, "self_deaf", what), "d.self_deaf")


def _check_request_guild_members(d: Mapping[str, Any]) -> None:
    what = "request guild members"
    _snowflake(_require(d, "guild_id", what), "d.guild_id")
    has_query, has_ids = "query" in d, "user_ids" in d
    if has_query == has_ids:
        raise InvalidCommandError(f"{what}: exactly one of d.query and d.user_ids is required")
    if has_query:
        if not isinstance(d["query"], str):
            raise InvalidCommandError("d.query must be a string")
        _check_int(_require(d, "limit", what), "d.limit")
    else:
        ids = d["user_ids"]
        if isinstance(ids, list):
            if not ids or len(ids) > MAX_MEMBER_USER_IDS:
                raise InvalidCommandError(
                    f"d.user_ids must hold 1 to {MAX_MEMBER_USER_IDS} ids, got {len(ids)}"
                )
            for user_id in ids:
                _snowflake(user_id, "d.user_ids[]")
        else:
            _snowflake(ids, "d.user_ids")
    if "presences" in d:
        _check_bool(d["presences"], "d.presences")
    if "nonce" in d:
        nonce = d["nonce"]
        if not isinstance(nonce, str) or len(nonce.encode()) > MAX_NONCE_BYTES:
            raise InvalidCommandError(
                f"d.nonce must be a string of at most {MAX_NONCE_BYTES} bytes"
            )


def _check_request_soundboard_sounds(d: Mapping[str, Any]) -> None:
    ids = _require(d, "guild_ids", "request soundboard sounds")
    if not isinstance(ids, list) or not ids:
        raise InvalidCommandError("d.guild_ids must be a non-empty list of guild ids")
    for guild_id in ids:
        _snowflake(guild_id, "d.guild_ids[]")


def _check_request_channel_info(d: Mapping[str, Any]) -> None:
    what = "request channel info"
    _snowflake(_require(d, "guild_id", what), "d.guild_id")
    fields = _require(d, "fields", what)
    if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
        raise InvalidCommandError("d.fields must be a non-empty list of strings")


_COMMAND_CHECKS: Final[dict[Opcode, Callable[[Mapping[str, Any]], None]]] = {
    Opcode.PRESENCE_UPDATE: _check_presence,
    Opcode.VOICE_STATE_UPDATE: _check_voice_state,
    Opcode.REQUEST_GUILD_MEMBERS: _check_request_guild_members,
    Opcode.REQUEST_SOUNDBOARD_SOUNDS: _check_request_soundboard_sounds,
    Opcode.REQUEST_CHANNEL_INFO: _check_request_channel_info,
}


def validate_command(op: object, d: object) -> Opcode:
    """Check a command a bot asked us to send; return its opcode or raise InvalidCommandError.

    Only the opcodes of :data:`protocol.gateway.COMMAND_OPCODES` pass, each with a
    ``d`` object of the basic shape Discord documents. Identify, Resume and
    Heartbeat belong to the shard, never to a bot.
    """
    if isinstance(op, bool) or not isinstance(op, int):
        raise InvalidCommandError(f"op must be an int, not {type(op).__name__}")
    if op not in COMMAND_OPCODES:
        allowed = ", ".join(str(int(o)) for o in sorted(COMMAND_OPCODES))
        raise InvalidCommandError(
            f"op {op} is not a command this cluster relays (allowed: {allowed})"
        )
    opcode = Opcode(op)
    if not isinstance(d, dict):
        raise InvalidCommandError(f"op {op} needs d to be a JSON object, not {type(d).__name__}")
    _COMMAND_CHECKS[opcode](d)
    return opcode
