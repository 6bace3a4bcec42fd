"""The typed errors of the consumer library.

Every error raised on purpose by :mod:`titanium_client` is a :class:`ClientError`.
They carry what a caller needs to decide (the reason, the shards a command
reached, whether a retry can help), never a string to parse.
"""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error the library raises on purpose."""


class DecodeError(ClientError, ValueError):
    """Bytes that are not an event in the expected layout (a sink entry, a payload).

    ``reason`` says what was wrong in words. Arbitrary input never raises
    anything else from the decoders.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AlreadyAcknowledgedError(ClientError):
    """``ack``, ``nak``, ``term`` or ``in_progress`` on an event already settled.

    ``state`` is the :class:`~titanium_client.events.AckState` the event was in
    (the first settlement wins; nats.py's ``MsgAlreadyAckdError``).
    """

    def __init__(self, state: object) -> None:
        super().__init__(f"the event was already settled ({state})")
        self.state = state


class NotSupportedError(ClientError):
    """The transport cannot do this, e.g. ``nak`` on a PUB tap (nothing redelivers there)."""


class TransportError(ClientError):
    """Redis or ZeroMQ failed during an operation the caller awaited (e.g. an explicit ``ack``).

    The operation had no effect that the library knows of; retrying it is safe.
    ``__cause__`` holds the underlying error.
    """

    can_retry = True


class SubscriptionFailedError(ClientError):
    """A subscription's background reader or claimer stopped on an error retrying cannot fix.

    For example WRONGTYPE: a key named like one of the streams holds another
    type. Connection failures never end up here (they are waited out); the loop
    ends with this error and ``__cause__`` holds Redis's.
    """


class CommandError(ClientError):
    """Base of the errors of :class:`~titanium_client.commands.Cluster` methods."""


class InvalidCommandError(CommandError, ValueError):
    """A command refused before it was sent: opcode not allowed, bad ``d``, bad target, too large."""


class CommandRefusedError(CommandError):
    """The cluster answered ``{"ok": false, "error": ...}``.

    ``reason`` is the reply's error text; ``kind`` its machine-readable kind when
    the cluster sends one (``None`` otherwise); ``shard_ids`` the shards that did
    take the command before the failure (for ``all=True``).
    """

    def __init__(self, reason: str, kind: str | None, shard_ids: tuple[int, ...]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.shard_ids = shard_ids


class CommandTimeoutError(CommandError, TimeoutError):
    """No reply from the control socket within the timeout.

    The command may or may not have reached a shard: it is not resent (gateway
    commands are not idempotent), the caller decides.
    """

    def __init__(self, endpoint: str, timeout: float) -> None:
        super().__init__(f"no reply from {endpoint} within {timeout:g} s")
        self.endpoint = endpoint
        self.timeout = timeout


class ReplyFormatError(CommandError):
    """The control socket answered something that is not ``{"ok": bool, ...}``."""

    def __init__(self, reason: str, reply: bytes) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply[:200]
