"""Gateway opcodes, close codes, and the one table that decides what a close means.

Sources: Discord's "Gateway Opcodes" and "Gateway Close Event Codes"
(developers/topics/opcodes-and-status-codes.mdx), summarised in
shared/PROTOCOL.md sections 1 and 2.
"""

from __future__ import annotations

import enum
from typing import Final

from protocol.intents import PRIVILEGED_NAMES, intent_names, privileged_in

API_VERSION: Final = 10
SUPPORTED_API_VERSIONS: Final = frozenset({9, 10})

#: Discord closes a connection whose client payload exceeds this size (4002).
CLIENT_PAYLOAD_LIMIT: Final = 4096
#: Client payloads allowed per connection per window (heartbeats included).
SEND_LIMIT: Final = 120
SEND_WINDOW_S: Final = 60.0
#: Default identify spacing per rate-limit bucket, measured by the server.
IDENTIFY_INTERVAL_S: Final = 5.0
#: A shard holding more guilds than this must shard (close 4011).
MAX_GUILDS_PER_SHARD: Final = 2500
#: Session starts (IDENTIFYs) a new application gets per day; Discord raises it for
#: large bots (shared/PROTOCOL.md section 5, ``session_start_limit.total``).
DEFAULT_SESSION_START_LIMIT: Final = 1000


class Opcode(enum.IntEnum):
    """Gateway opcodes (op 5 is obsolete and deliberately absent)."""

    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11
    REQUEST_SOUNDBOARD_SOUNDS = 31
    REQUEST_CHANNEL_INFO = 43


#: Opcodes a bot may send on the control socket (DESIGN.md 4.3).
COMMAND_OPCODES: Final = frozenset(
    {
        Opcode.PRESENCE_UPDATE,
        Opcode.VOICE_STATE_UPDATE,
        Opcode.REQUEST_GUILD_MEMBERS,
        Opcode.REQUEST_SOUNDBOARD_SOUNDS,
        Opcode.REQUEST_CHANNEL_INFO,
    }
)

#: Opcodes a client may send at all.
CLIENT_OPCODES: Final = COMMAND_OPCODES | {Opcode.HEARTBEAT, Opcode.IDENTIFY, Opcode.RESUME}


class CloseCode(enum.IntEnum):
    """Gateway close event codes, plus the WebSocket codes that matter to a shard."""

    NORMAL = 1000
    GOING_AWAY = 1001
    UNKNOWN_ERROR = 4000
    UNKNOWN_OPCODE = 4001
    DECODE_ERROR = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    INVALID_SEQ = 4007
    RATE_LIMITED = 4008
    SESSION_TIMED_OUT = 4009
    INVALID_SHARD = 4010
    SHARDING_REQUIRED = 4011
    INVALID_API_VERSION = 4012
    INVALID_INTENTS = 4013
    DISALLOWED_INTENTS = 4014


#: The close code a client uses when it means to resume (twilight and discord.py agree).
RESUMABLE_CLOSE_CODE: Final = CloseCode.UNKNOWN_ERROR


class CloseAction(enum.Enum):
    """What a shard does after the server closed its connection with a code."""

    RESUME = "resume"  #: reconnect on the resume URL and RESUME the session
    NEW_SESSION = "new_session"  #: drop the session, reconnect and IDENTIFY
    FATAL = "fatal"  #: stop for good; retrying cannot help


#: Per close code, what to do. 4007/4009 go straight to a new session (the docs
#: say "start a new session"; trying RESUME first only costs a round trip).
#: 4003 means the session is gone or was never made. Fatal: 4004, 4010-4014.
CLOSE_ACTIONS: Final[dict[int, CloseAction]] = {
    CloseCode.NORMAL: CloseAction.RESUME,
    CloseCode.GOING_AWAY: CloseAction.RESUME,
    CloseCode.UNKNOWN_ERROR: CloseAction.RESUME,
    CloseCode.UNKNOWN_OPCODE: CloseAction.RESUME,
    CloseCode.DECODE_ERROR: CloseAction.RESUME,
    CloseCode.NOT_AUTHENTICATED: CloseAction.NEW_SESSION,
    CloseCode.AUTHENTICATION_FAILED: CloseAction.FATAL,
    CloseCode.ALREADY_AUTHENTICATED: CloseAction.RESUME,
    CloseCode.INVALID_SEQ: CloseAction.NEW_SESSION,
    CloseCode.RATE_LIMITED: CloseAction.RESUME,
    CloseCode.SESSION_TIMED_OUT: CloseAction.NEW_SESSION,
    CloseCode.INVALID_SHARD: CloseAction.FATAL,
    CloseCode.SHARDING_REQUIRED: CloseAction.FATAL,
    CloseCode.INVALID_API_VERSION: CloseAction.FATAL,
    CloseCode.INVALID_INTENTS: CloseAction.FATAL,
    CloseCode.DISALLOWED_INTENTS: CloseAction.FATAL,
}

#: One line per fatal code: the cause and the fix, for the operator.
FATAL_EXPLANATIONS: Final[dict[int, str]] = {
    CloseCode.AUTHENTICATION_FAILED: "authentication failed (4004): check DISCORD_TOKEN",
    CloseCode.INVALID_SHARD: "invalid shard (4010): the shard count or shard ids are wrong for this bot; use --shards auto",
    CloseCode.SHARDING_REQUIRED: "sharding required (4011): too many guilds per shard; use --shards auto or more shards",
    CloseCode.INVALID_API_VERSION: "invalid API version (4012): the gateway rejected the API version",
    CloseCode.INVALID_INTENTS: "invalid intents (4013): --intents contains bits Discord does not define",
    CloseCode.DISALLOWED_INTENTS: (
        "disallowed intents (4014): --intents asks for a privileged intent the application has "
        "not enabled; on Discord, turn it on in the Developer Portal (Bot -> Privileged Gateway "
        "Intents); against the simulator, start it with --privileged-intents "
        f"{PRIVILEGED_NAMES} (`cluster simulate` or `cluster up --simulate`); or drop it from --intents"
    ),
}


def close_action(code: int | None) -> CloseAction:
    """What to do after the server closed with ``code`` (None: no close frame at all).

    Unknown codes and a dropped TCP connection keep the session: resuming is
    the cheap path, and the server answers op 9 if the session is gone.
    """
    if code is None:
        return CloseAction.RESUME
    return CLOSE_ACTIONS.get(code, CloseAction.RESUME)


def is_fatal(code: int | None) -> bool:
    return close_action(code) is CloseAction.FATAL


def explain_fatal(code: int, intents: int | None = None) -> str:
    """The operator's line for a fatal close ``code``.

    With the ``intents`` the shards identified with, a 4014 line names the
    privileged ones asked for, and the simulator option enables exactly those.
    """
    if code == CloseCode.DISALLOWED_INTENTS and intents is not None:
        asked = intent_names(privileged_in(intents))
        if asked:
            names = ",".join(asked)
            return (
                f"disallowed intents (4014): --intents asks for {names.replace(',', ', ')}, "
                "privileged intents the application has not enabled; on Discord, turn them on in "
                "the Developer Portal (Bot -> Privileged Gateway Intents); against the simulator, "
                f"start it with --privileged-intents {names} (`cluster simulate` or "
                "`cluster up --simulate`); or drop them from --intents"
            )
    return FATAL_EXPLANATIONS.get(code, f"the gateway closed the session for good ({code})")
